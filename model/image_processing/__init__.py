"""Image processing on numpy arrays, shared by the training data (``model.data``) and the runtime.

The networks live in ``model``; the pixel operations both sides run live here, one implementation each
(as diffusers keeps its ``image_processor`` apart from ``models/``):

* ``color``: full-range BT.601 YCbCr, luma, chroma merging, gray <-> RGB;
* ``filters``: box mean, gaussian blur, guided filter (reflect borders);
* ``pyramid``: Gaussian / Laplacian pyramids;
* ``detail``: the pixel-space detail path the runtime runs after decoding (and the C++ host line for line).
"""
