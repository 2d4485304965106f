"""Write the vectors the C++ host's ctest suite checks itself against (runtime/cpp/tests).

    .venv/bin/python tests/cpp/make_vectors.py        # rewrites tests/vectors/{samplers,tokenizer,padding,tiling}.json

Each file is produced by the Python runtime itself, so C++ is compared with the code it mirrors:

* ``samplers.json``: every sampler of :mod:`runtime.samplers` on an affine, time-dependent velocity
  field ``v(z, t) = a·z + b·t + c`` (float32, element-wise), Gaussian and source priors, plus the
  initial latent of :func:`runtime.samplers.initial_latent`.
* ``tokenizer.json``: ``model.text_encoder.SpieceTokenizer.ids`` (sentencepiece ids + EOS 1) of the
  shipped tokenizer ``model/assets/tokenizer/spiece.model`` on assorted prompts.
* ``padding.json``: :func:`runtime.pipeline.pad_to_size` (numpy reflect / edge padding) at the sizes
  :func:`runtime.pipeline._padded` picks, including pads longer than the image side; under ``resample``
  the working-scale resampling (:func:`model.work_scale.upscale` / :func:`~model.work_scale.downscale`)
  of small gray and RGB images at k = 2 and 3.
* ``tiling.json``: :func:`runtime.backends.tiled.window_starts` and ``ramp``, and whole tiled calls of
  :class:`runtime.backends.tiled.TiledBackend` over a stand-in backend whose graphs are *not* local
  (every output depends on the mean of its window, see :class:`WindowMeanBackend`), so the vectors pin
  down the windows, the unit conversions and the blending, not only a shape.

``tests/cpp/test_vectors.py`` fails when a committed file no longer matches what this script writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"
TOKENIZER = ROOT / "model" / "assets" / "tokenizer" / "spiece.model"


def _floats(x) -> list[float]:
    return [float(v) for v in np.asarray(x, np.float32).ravel()]


def _short(x) -> list[float]:
    """7 significant digits: for values compared with a tolerance, at a third of the file size."""
    return [float(f"{v:.7g}") for v in np.asarray(x, np.float32).ravel()]


def sampler_vectors() -> dict:
    from runtime import samplers
    from model import flow

    rng = np.random.default_rng(1234)
    shape = (1, 2, 3, 4)
    a = (rng.uniform(-1.0, 0.5, shape)).astype(np.float32)
    b = rng.standard_normal(shape).astype(np.float32)
    c = rng.standard_normal(shape).astype(np.float32)
    z_a = rng.standard_normal(shape).astype(np.float32)
    z_b = rng.standard_normal(shape).astype(np.float32)

    def velocity(z, t):
        return a * z + b * t + c  # float32 arithmetic, t a Python float (NEP 50: cast to float32)

    cases = []
    for prior_name in ("gaussian", "source_mean"):
        for seed in (0, 7):
            z0, params = samplers.initial_latent(prior_name, z_a, seed, z_a, z_b, sigma=0.5)
            for name in ("euler", "midpoint", "midpoint_reuse", "euler_sde", "midpoint_sde", "midpoint_reuse_sde"):
                spec = samplers.get_sampler(name)
                for steps in (1, 3):
                    g = 0.7 if spec.stochastic else 0.0
                    out = samplers.sample(name, velocity, z0, steps=steps, g=g, seed=seed, prior=params)
                    cases.append({"sampler": name, "prior": prior_name, "sigma": 0.5, "seed": seed, "steps": steps,
                                  "g": g, "nfe": out.nfe, "z0": _floats(z0), "latent": _floats(out.latent)})
    return {"generator": "tests/cpp/make_vectors.py (runtime.samplers)",
            "velocity": "v(z, t) = a*z + b*t + c, float32 element-wise, evaluated left to right",
            "shape": list(shape), "a": _floats(a), "b": _floats(b), "c": _floats(c), "z_a": _floats(z_a),
            "z_b": _floats(z_b), "cases": cases}


PROMPTS = [
    "fuse the infrared and visible images",
    "remove the rain and the noise",
    "  Remove   the HAZE, then fuse!  ",
    "deblur the visible image; brighten the dark infrared strips (x2)",
    "fusionner les images infrarouges et visibles",
    "Entfernen Sie den Schnee und das Rauschen",
    "multi-exposure fusion with 16-bit PNGs at 1920x1080",
    "a",
    "\u00e9t\u00e9 \u2014 caf\u00e9 \u00fcber na\u00efve",
    "",
]


def tokenizer_vectors() -> dict:
    from model.text_encoder import SpieceTokenizer

    tok = SpieceTokenizer.from_file(TOKENIZER)
    return {"generator": "tests/cpp/make_vectors.py (model.text_encoder.SpieceTokenizer.ids)",
            "model": "model/assets/tokenizer/spiece.model", "pad_id": tok.pad_id, "eos_id": tok.eos_id,
            "cases": [{"prompt": p, "ids": [int(i) for i in tok.ids(p)]} for p in PROMPTS]}


def padding_vectors() -> dict:
    from runtime.pipeline import _padded, pad_to_size

    rng = np.random.default_rng(99)
    cases = []
    for h, w, c, minimum in ((5, 7, 1, 16), (10, 21, 3, 16), (1, 9, 1, 16), (17, 16, 3, 32), (3, 3, 3, 16)):
        img = (rng.integers(0, 256, (h, w, c)) / 256).astype(np.float32)  # short exact decimals
        ph, pw = _padded(h, minimum), _padded(w, minimum)
        out = pad_to_size(img, ph, pw)
        cases.append({"height": h, "width": w, "channels": c, "minimum": minimum, "padded_height": ph,
                      "padded_width": pw, "image": _floats(img), "padded": _floats(out)})
    from model.work_scale import downscale, upscale

    resample = []
    for h, w, c, k in ((5, 7, 1, 2), (4, 6, 3, 2), (3, 5, 3, 3), (1, 2, 1, 2)):
        img = (rng.integers(0, 256, (h, w, c)) / 256).astype(np.float32)
        up = upscale(img, k)
        resample.append({"height": h, "width": w, "channels": c, "factor": k, "image": _floats(img),
                         "upscaled": _floats(up), "downscaled": _floats(downscale(up, k))})
    return {"generator": "tests/cpp/make_vectors.py (runtime.pipeline.pad_to_size, numpy reflect; "
                         "model.work_scale)", "cases": cases, "resample": resample}


class WindowMeanBackend:
    """Stand-ins for the four graphs, each shifted by the mean of its input window (test_tiling.cpp
    computes the same): the encoder an 8x8 box mean, the decoder an 8x nearest-neighbour enlargement."""

    name, heads = "window-mean", ("flow", "regression")

    def encode_images(self, x):
        b, c, h, w = x.shape
        return x.reshape(b, c, h // 8, 8, w // 8, 8).mean(axis=(3, 5)) + x.mean()

    def velocity(self, z_t, t, z_a, z_b, embeds, mask):
        return z_t * np.float32(t[0]) + z_a - z_b.mean()

    def regress(self, z_a, z_b, embeds, mask):
        return np.float32(0.5) * z_a + z_b.mean()

    def decode(self, z):
        return np.repeat(np.repeat(z, 8, axis=2), 8, axis=3) - z.mean()


def tiling_vectors() -> dict:
    from runtime.backends.tiled import TiledBackend, ramp, window_starts

    starts = [{"size": s, "window": w, "overlap": o, "step": st, "starts": window_starts(s, w, o, st)}
              for s, w, o, st in ((80, 32, 16, 16), (144, 64, 32, 16), (10, 4, 2, 2), (18, 8, 8, 2), (32, 64, 16, 16),
                                  (100, 48, 16, 16))]
    ramps = [{"n": n, "overlap": o, "weights": _floats(ramp(n, o))} for n, o in ((8, 2), (5, 4), (4, 0), (32, 16))]
    rng = np.random.default_rng(7)
    image = (rng.integers(0, 256, (1, 1, 48, 48)) / 128 - 1).astype(np.float32)
    z_a, z_b, z_t = ((rng.integers(0, 256, (1, 2, 6, 6)) / 64 - 2).astype(np.float32) for _ in range(3))
    calls = []
    for max_h, max_w, overlap in ((32, 32, 64), (32, 48, 32), (48, 32, 16)):
        tiled = TiledBackend(WindowMeanBackend(), (max_h, max_w), overlap=overlap)
        calls.append({"max_height": max_h, "max_width": max_w, "overlap": overlap, "effective_overlap": tiled.overlap,
                      "encode": _short(tiled.encode_images(image)),
                      "velocity": _short(tiled.velocity(z_t, np.array([0.25], np.float32), z_a, z_b, None, None)),
                      "regress": _short(tiled.regress(z_a, z_b, None, None)),
                      "decode": _short(tiled.decode(z_a[:, :1])), "calls": tiled.calls})
    return {"generator": "tests/cpp/make_vectors.py (runtime.backends.tiled over WindowMeanBackend)",
            "window_starts": starts, "ramps": ramps,
            "image": {"shape": list(image.shape), "values": _floats(image)},
            "latents": {"shape": list(z_a.shape), "z_a": _floats(z_a), "z_b": _floats(z_b), "z_t": _floats(z_t),
                        "t": 0.25},
            "calls": calls}


def all_vectors() -> dict[str, dict]:
    return {"samplers.json": sampler_vectors(), "tokenizer.json": tokenizer_vectors(),
            "padding.json": padding_vectors(), "tiling.json": tiling_vectors()}


def dumps(obj, indent: str = "") -> str:
    """JSON with one object key per line and flat lists of numbers kept on one line."""
    inner = indent + " "
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k)}: {dumps(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(inner + dumps(v, inner) for v in obj) + "\n" + indent + "]"
    return json.dumps(obj, ensure_ascii=True)


def write_vectors(directory: Path = VECTORS) -> list[Path]:
    from model.atomic import atomic_file

    written = []
    for name, obj in all_vectors().items():
        with atomic_file(directory / name) as tmp:
            tmp.write_text(dumps(obj) + "\n")
        written.append(directory / name)
    return written


if __name__ == "__main__":
    for path in write_vectors():
        print(path)
