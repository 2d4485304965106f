"""The model's geometry and head names: the one definition every layer imports (export graphs, the runtime,
calibration, the manifest; the C++ host reads them from the manifest or names this file).

    LATENT_FACTOR   the VAE's f: pixels per latent pixel (MMAIF 3.2)
    PATCH           the DiT's patch size p (MMAIF 3.3.1)
    PIXEL_MULTIPLE  f x p = 16: image sides are padded to multiples of it (one DiT token per 16 x 16 px)
    MIN_GRID        fewest 16-px grid cells per side the exported graphs accept (torch.export Dim min)
    MIN_SIDE        MIN_GRID x PIXEL_MULTIPLE = 32 px: the smallest padded side any exported graph runs
    HEADS           the DiT heads: "flow" (v_θ, Eq. 11) and "regression" (f_θ, Eq. 8)
"""

from __future__ import annotations

LATENT_FACTOR = 8
PATCH = 2
PIXEL_MULTIPLE = LATENT_FACTOR * PATCH
MIN_GRID = 2
MIN_SIDE = MIN_GRID * PIXEL_MULTIPLE
HEADS = ("flow", "regression")
