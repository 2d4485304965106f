"""Write the vectors the C++ host's ctest suite checks itself against (runtime/cpp/tests).

    .venv/bin/python tests/cpp/make_vectors.py        # rewrites tests/vectors/{samplers,tokenizer,padding,tiling,detail}.json

Each file is produced by the Python runtime itself, so C++ is compared with the code it mirrors:

* ``samplers.json``: every sampler of :mod:`latentfuse.runtime.samplers` on an affine, time-dependent velocity
  field ``v(z, t) = a·z + b·t + c`` (float32, element-wise), Gaussian and source priors, plus the
  initial latent of :func:`latentfuse.runtime.samplers.initial_latent`; and started at t0 = 0.4 from
  :func:`latentfuse.runtime.samplers.start_latent` (``z_b`` standing in for the regression estimate).
* ``tokenizer.json``: ``model.text_encoder.SpieceTokenizer.ids`` (sentencepiece ids + EOS 1) of the
  shipped tokenizer ``model/assets/tokenizer/spiece.model`` on assorted prompts.
* ``padding.json``: :func:`latentfuse.runtime.pipeline.pad_to_size` (numpy reflect / edge padding) at the sizes
  :func:`latentfuse.runtime.pipeline._padded` picks, including pads longer than the image side; under ``resample``
  the working-scale resampling (:func:`latentfuse.model.work_scale.upscale` / :func:`~latentfuse.model.work_scale.downscale`)
  of small gray and RGB images at k = 2 and 3.
* ``tiling.json``: :func:`latentfuse.runtime.backends.tiled.window_starts` and ``ramp``, whole calls of
  :class:`latentfuse.runtime.backends.tiled.TiledBackend` (DiT windows batched whole, chunked to ``max_batch`` and
  one per call; VAE whole or in tiles) over a stand-in backend whose graphs are *not* local (every
  output row depends on the mean of its own window, see :class:`WindowMeanBackend`), with the number of
  calls and the rows of every DiT call, so the vectors pin down the windows, their batching, the unit
  conversions and the blending, not only a shape; and :meth:`latentfuse.runtime.pipeline.Pipeline.plan_windows`
  (DiT window and VAE tile) for assorted sizes, limits, model windows and ``--tile`` values;
  :func:`latentfuse.runtime.backends.tiled.balanced_side` (the even VAE tiles) and
  :meth:`latentfuse.runtime.pipeline.Pipeline.plan_memory` (VAE tile, DiT windows per call, detail strip rows,
  estimated peak, or the error) for sizes up to 12 MP, budgets, batch caps and detail halos.
* ``detail.json``: the detail path of :mod:`latentfuse.model.image_processing.detail`:
  :func:`~latentfuse.model.image_processing.detail.restore_detail` on small deterministic images (7x9, 13x16, 24x20; RGB, gray and VIF-style RGB + gray sources, identical sources
  for the argmax ties) under configs covering non-integer sigma, a gaussian wider than the image, radius
  0, box windows wider than the image, ``fused_candidate`` both ways, ``noise_k`` 0 and > 0, gain != 1
  and clipping; the filters it uses (:func:`latentfuse.model.image_processing.filters.gaussian` /
  ``box_filter``), ``luma`` and :func:`~latentfuse.model.image_processing.detail.noise_sigma` (odd and even
  counts); and :class:`~latentfuse.model.image_processing.detail.DetailSettings` (``from_dict`` of a manifest section, ``mode_for`` and ``config_for`` on assorted prompts).

``tests/cpp/test_vectors.py`` fails when a committed file no longer matches what this script writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from latentfuse.model.errors import LatentfuseError

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"
TOKENIZER = ROOT / "model" / "assets" / "tokenizer" / "spiece.model"


def _floats(x) -> list[float]:
    return [float(v) for v in np.asarray(x, np.float32).ravel()]


def _short(x) -> list[float]:
    """7 significant digits: for values compared with a tolerance, at a third of the file size."""
    return [float(f"{v:.7g}") for v in np.asarray(x, np.float32).ravel()]


START = 0.4  # the start of the started sampler cases


def sampler_vectors() -> dict:
    from latentfuse.runtime import samplers

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
                    if seed == 0:  # the flow started from an estimate (model.flow.DEFAULT_START)
                        z_start = samplers.start_latent(z0, z_b, START)
                        out = samplers.sample(name, velocity, z_start, steps=steps, g=g, seed=seed, prior=params,
                                              start=START)
                        cases.append({"sampler": name, "prior": prior_name, "sigma": 0.5, "seed": seed,
                                      "steps": steps, "g": g, "nfe": out.nfe, "z0": _floats(z0), "start": START,
                                      "z_start": _floats(z_start), "latent": _floats(out.latent)})
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
    from latentfuse.model.text_encoder import SpieceTokenizer

    tok = SpieceTokenizer.from_file(TOKENIZER)
    return {"generator": "tests/cpp/make_vectors.py (model.text_encoder.SpieceTokenizer.ids)",
            "model": "model/assets/tokenizer/spiece.model", "pad_id": tok.pad_id, "eos_id": tok.eos_id,
            "cases": [{"prompt": p, "ids": [int(i) for i in tok.ids(p)]} for p in PROMPTS]}


def padding_vectors() -> dict:
    from latentfuse.runtime.pipeline import _padded, pad_to_size

    rng = np.random.default_rng(99)
    cases = []
    for h, w, c, minimum in ((5, 7, 1, 16), (10, 21, 3, 16), (1, 9, 1, 16), (17, 16, 3, 32), (3, 3, 3, 16)):
        img = (rng.integers(0, 256, (h, w, c)) / 256).astype(np.float32)  # short exact decimals
        ph, pw = _padded(h, minimum), _padded(w, minimum)
        out = pad_to_size(img, ph, pw)
        cases.append({"height": h, "width": w, "channels": c, "minimum": minimum, "padded_height": ph,
                      "padded_width": pw, "image": _floats(img), "padded": _floats(out)})
    from latentfuse.model.work_scale import downscale, upscale

    resample = []
    for h, w, c, k in ((5, 7, 1, 2), (4, 6, 3, 2), (3, 5, 3, 3), (1, 2, 1, 2)):
        img = (rng.integers(0, 256, (h, w, c)) / 256).astype(np.float32)
        up = upscale(img, k)
        resample.append({"height": h, "width": w, "channels": c, "factor": k, "image": _floats(img),
                         "upscaled": _floats(up), "downscaled": _floats(downscale(up, k))})
    return {"generator": "tests/cpp/make_vectors.py (runtime.pipeline.pad_to_size, numpy reflect; "
                         "model.work_scale)", "cases": cases, "resample": resample}


class WindowMeanBackend:
    """Stand-ins for the four graphs, each row shifted by the mean of its own input window (test_tiling.cpp
    computes the same): the encoder an 8x8 box mean, the decoder an 8x nearest-neighbour enlargement.
    Means are per batch row, so rows stay independent as in a real network when windows are batched;
    ``batches`` records the rows of every DiT call (the chunking)."""

    name, heads = "window-mean", ("flow", "regression")
    low_memory = False  # runtime.backends.base.Backend's: nothing to hand back here

    def __init__(self):
        self.batches: list[int] = []

    @staticmethod
    def _row_mean(x):
        return x.mean(axis=(1, 2, 3), keepdims=True)

    def encode_images(self, x):
        b, c, h, w = x.shape
        return x.reshape(b, c, h // 8, 8, w // 8, 8).mean(axis=(3, 5)) + self._row_mean(x)

    def velocity(self, z_t, t, z_a, z_b, embeds, mask):
        self.batches.append(z_t.shape[0])
        assert t.shape == (z_t.shape[0],) and embeds.shape[0] == mask.shape[0] == z_t.shape[0]
        return z_t * t.reshape(-1, 1, 1, 1) + z_a - self._row_mean(z_b) + embeds.reshape(len(embeds), 1, 1, 1)

    def regress(self, z_a, z_b, embeds, mask):
        self.batches.append(z_a.shape[0])
        assert embeds.shape[0] == mask.shape[0] == z_a.shape[0]
        return np.float32(0.5) * z_a + self._row_mean(z_b) + embeds.reshape(len(embeds), 1, 1, 1)

    def decode(self, z):
        return np.repeat(np.repeat(z, 8, axis=2), 8, axis=3) - self._row_mean(z)


# TiledBackend(inner, window, vae_tile, overlap, vae_overlap, max_batch) over a 2 x 1 x 48 x 64 image and
# 2 x 2 x 6 x 8 latents (48 x 64 px): DiT windows batched whole / chunked / one per call, VAE tiles or not
TILING_CASES = (
    {"window": (32, 32), "vae_tile": None, "overlap": 64, "vae_overlap": 128, "max_batch": None},
    {"window": (32, 48), "vae_tile": (32, 32), "overlap": 32, "vae_overlap": 128, "max_batch": 5},
    {"window": (48, 32), "vae_tile": (48, 32), "overlap": 16, "vae_overlap": 32, "max_batch": 1},
    {"window": None, "vae_tile": (32, 48), "overlap": 64, "vae_overlap": 16, "max_batch": 3},
    {"window": (64, 64), "vae_tile": (48, 64), "overlap": 64, "vae_overlap": 128, "max_batch": 4},
)

# Pipeline.plan_windows(height, width, tile) for a backend limit (None: none stated) and model window
PLAN_CASES = (
    (288, 512, None, 128, None), (288, 512, (1024, 1024), 0, None), (960, 1280, (1024, 1024), 128, None),
    (960, 1280, None, 0, None), (960, 1280, (2048, 2048), 0, None), (800, 768, (512, 1024), 256, None),
    (288, 512, None, 128, 256), (288, 512, None, 128, 2048), (96, 80, (64, 64), 0, 32), (768, 768, None, 0, None),
)


def plan_vectors() -> list[dict]:
    from types import SimpleNamespace

    from latentfuse.runtime.memory import VAE_MAX_SIDE
    from latentfuse.runtime.pipeline import Pipeline

    cases = []
    for h, w, limit, window, tile in PLAN_CASES:
        # the attributes plan_windows reads, at a Pipeline's defaults
        view = SimpleNamespace(backend=SimpleNamespace(max_image_size=lambda limit=limit: limit), window=window,
                               vae_max_side=VAE_MAX_SIDE)
        dit, vae = Pipeline.plan_windows(view, h, w, tile)
        cases.append({"height": h, "width": w, "limit": limit and list(limit), "window": window, "tile": tile,
                      "dit": dit and list(dit), "vae": vae and list(vae)})
    return cases


# Pipeline.plan_memory(height, width, (h, w), tile, budget, sources) for a backend limit, model window, backend
# batch cap (None: none) and detail halo (None: no detail path); budgets from roomy to the smallest that works
MEMORY_CASES = (
    (480, 640, 480, 640, None, 128, None, "12G", None, 88),
    (1088, 1920, 1080, 1920, None, 128, None, "12G", None, 88),
    (3008, 4000, 3000, 4000, None, 128, None, "12G", None, 88),
    (3008, 4000, 3000, 4000, None, 128, None, "1.5G", 8, 88),
    (3008, 4000, 3000, 4000, None, 128, None, "1.2G", None, 40),
    (3008, 4000, 3000, 4000, None, 128, 512, "2G", None, None),
    (1024, 1024, 1024, 1024, (1024, 1024), 0, None, "12G", 4, 88),
    (1024, 1024, 1024, 1024, None, 0, None, "3G", None, 88),
    (640, 480, 640, 480, None, 128, None, "900M", None, 88),
)
BALANCED_CASES = ((1920, 768, 64), (3008, 768, 64), (4000, 768, 128), (800, 768, 64), (768, 768, 64), (1040, 256, 64),
                  (64, 32, 16))


def memory_plan_vectors() -> list[dict]:
    from types import SimpleNamespace

    from latentfuse.model.image_processing.detail import DetailConfig
    from latentfuse.runtime.memory import VAE_MAX_SIDE, parse_memory
    from latentfuse.runtime.pipeline import MAX_DIT_BATCH, Pipeline

    cases = []
    for height, width, h, w, limit, window, cap, budget, sources, halo in MEMORY_CASES:
        # a detail set whose halo is `halo` (int(4 sigma + 0.5) + 3 radius: sigma 16 / radius 8 gives 88)
        detail = None if halo is None else SimpleNamespace(clean=DetailConfig(sigma=(halo - 24) / 4, radius=8),
                                                           safe=DetailConfig(sigma=1.0, radius=0))
        backend = SimpleNamespace(max_image_size=lambda limit=limit: limit, max_batch_size=lambda cap=cap: cap)
        view = SimpleNamespace(backend=backend, window=window, vae_max_side=VAE_MAX_SIDE, work_scale=1,
                               max_memory=None, max_dit_batch=MAX_DIT_BATCH, detail=detail)
        view.plan_windows = lambda H, W, tile, view=view: Pipeline.plan_windows(view, H, W, tile)
        src = None if sources is None else sources * 2 ** 20
        case = {"height": height, "width": width, "h": h, "w": w, "limit": limit and list(limit), "window": window,
                "max_batch": cap, "budget": parse_memory(budget), "sources": src if src is not None else 2 * 3 * 4 * h * w,
                "halo": -1 if halo is None else halo}
        try:
            plan = Pipeline.plan_memory(view, height, width, (h, w), None, budget, src, fidelity=False)
            case["plan"] = {"dit_window": plan.dit_window and list(plan.dit_window),
                            "vae_tile": plan.vae_tile and list(plan.vae_tile), "dit_batch": plan.dit_batch,
                            "detail_rows": plan.detail_rows, "peak": plan.peak}
        except LatentfuseError as err:
            case["error"] = str(err)
        cases.append(case)
    return cases


def tiling_vectors() -> dict:
    from latentfuse.runtime.backends.tiled import TiledBackend, balanced_side, ramp, window_starts

    starts = [{"size": s, "window": w, "overlap": o, "step": st, "starts": window_starts(s, w, o, st)}
              for s, w, o, st in ((80, 32, 16, 16), (144, 64, 32, 16), (10, 4, 2, 2), (18, 8, 8, 2), (32, 64, 16, 16),
                                  (100, 48, 16, 16))]
    ramps = [{"n": n, "overlap": o, "weights": _floats(ramp(n, o))} for n, o in ((8, 2), (5, 4), (4, 0), (32, 16))]
    rng = np.random.default_rng(7)
    image = (rng.integers(0, 256, (2, 1, 48, 64)) / 128 - 1).astype(np.float32)
    z_a, z_b, z_t = ((rng.integers(0, 256, (2, 2, 6, 8)) / 64 - 2).astype(np.float32) for _ in range(3))
    t = np.array([0.25, 0.75], np.float32)
    embeds = np.array([0.5, -0.25], np.float32).reshape(2, 1, 1)  # [B, L=1, d=1]: a per-row offset
    mask = np.ones((2, 1), np.int64)
    calls = []
    for case in TILING_CASES:
        inner = WindowMeanBackend()
        tiled = TiledBackend(inner, case["window"], case["vae_tile"], overlap=case["overlap"],
                             vae_overlap=case["vae_overlap"], max_batch=case["max_batch"])
        counts, out = {}, {}
        for kind, fn in (("encode", lambda: tiled.encode_images(image)),
                         ("velocity", lambda: tiled.velocity(z_t, t, z_a, z_b, embeds, mask)),
                         ("regress", lambda: tiled.regress(z_a, z_b, embeds, mask)),
                         ("decode", lambda: tiled.decode(z_a[:1, :1]))):
            before, inner.batches = tiled.calls, []
            out[kind] = _short(fn())
            counts[kind] = {"calls": tiled.calls - before, "batches": list(inner.batches)}
        calls.append({**{k: (list(v) if isinstance(v, tuple) else v) for k, v in case.items()},
                      "effective_overlap": tiled.overlap, "effective_vae_overlap": tiled.vae_overlap,
                      "dit_windows": len(tiled.dit_windows(*z_a.shape[2:])), **out, "counts": counts,
                      "calls": tiled.calls})
    return {"generator": "tests/cpp/make_vectors.py (runtime.backends.tiled over WindowMeanBackend, "
                         "runtime.pipeline.Pipeline.plan_windows)",
            "window_starts": starts, "ramps": ramps,
            "image": {"shape": list(image.shape), "values": _floats(image)},
            "latents": {"shape": list(z_a.shape), "z_a": _floats(z_a), "z_b": _floats(z_b), "z_t": _floats(z_t),
                        "t": _floats(t), "embeds": _floats(embeds), "embeds_shape": list(embeds.shape),
                        "mask": [int(v) for v in mask.ravel()], "mask_shape": list(mask.shape)},
            "calls": calls, "plans": plan_vectors(), "memory_plans": memory_plan_vectors(),
            "balanced": [{"size": n, "limit": lim, "overlap": ov, "side": balanced_side(n, lim, ov)}
                         for n, lim, ov in BALANCED_CASES]}


# the manifest section of the brief (DetailSettings.to_dict()), and one with odd spacing / case in a clean
# prompt and without off_prefixes (the default list)
DETAIL_SECTION = {
    "clean": {"sigma": 8.0, "radius": 4, "fused_candidate": False, "gain": 1.0, "noise_k": 3.0},
    "safe": {"sigma": 4.0, "radius": 4, "fused_candidate": True, "gain": 1.0, "noise_k": 3.0},
    "clean_prompts": ["fuse the infrared and visible images", "fuse the multi-exposure images", "fuse the multi-focus images"],
    "off_prefixes": ["rain", "derain", "snow", "desnow", "strip", "destrip", "bands", "lines"]}
DETAIL_SECTION_DEFAULTS = {
    "clean": {"sigma": 2.5, "radius": 1, "fused_candidate": False},
    "safe": {"sigma": 1.5, "gain": 0.5, "noise_k": 0.0},
    "clean_prompts": ["  Fuse   the INFRARED and\tvisible images ", "fuse the multi-focus images"]}
DETAIL_PROMPTS = (
    "fuse the infrared and visible images", "  Fuse  the Infrared AND visible   images\n", "fuse the multi-focus images.",
    "fuse the multi-exposure images", "fuse the\u00a0multi-exposure\u2003images", "remove the grain", "derain the images", "destripe the infrared image",
    "brighten the dark image", "Remove the RAIN, then fuse!", "remove snow-like noise", "remove the stripes",
    "fuse the images with lines", "brainstorm a train of thought", "Rain123drops", "x-bands", "", "   ",
    "deblur the visible image; brighten the dark infrared strips (x2)", "d\u00e9rain the caf\u00e9 images",
)
# restore_detail cases: (fused, a, b, config); images by name from detail_images()
DETAIL_CASES = (
    ("f13", "a13", "b13", dict(sigma=2.5, radius=2, fused_candidate=True, gain=1.0, noise_k=3.0)),     # MEF: RGB x3
    ("f13", "a13", "b13g", dict(sigma=1.3, radius=1, fused_candidate=False, gain=1.0, noise_k=0.0)),   # VIF, gate off
    ("f13", "a13", "b13g", dict(sigma=0.7, radius=0, fused_candidate=True, gain=0.6, noise_k=2.0)),    # radius 0
    ("f7", "a7", "b7g", dict(sigma=4.0, radius=4, fused_candidate=True, gain=1.0, noise_k=3.0)),       # kernels > image
    ("f7", "a7", "b7", dict(sigma=8.0, radius=4, fused_candidate=False, gain=1.0, noise_k=3.0)),       # clean, 7x9
    ("f7g", "a7g", "b7g", dict(sigma=1.7, radius=2, fused_candidate=True, gain=1.7, noise_k=1.0)),     # all gray, clipping
    ("f24", "a24", "b24g", dict(sigma=8.0, radius=4, fused_candidate=False, gain=1.0, noise_k=3.0)),   # the clean set
    ("f24", "a24", "b24g", dict(sigma=4.0, radius=4, fused_candidate=True, gain=1.0, noise_k=3.0)),    # the safe set
    ("f24", "n24", "b24g", dict(sigma=2.2, radius=3, fused_candidate=True, gain=1.25, noise_k=6.0)),   # noisy A
    ("f24", "a24", "a24", dict(sigma=1.0, radius=1, fused_candidate=True, gain=1.0, noise_k=3.0)),     # A == B: ties
    ("f24", "b24g", "b24g", dict(sigma=3.0, radius=2, fused_candidate=False, gain=2.5, noise_k=0.0)),  # ties, strong gain
    # in strips (strip_rows, a fifth element): detail_halo rows of context, the whole sources' noise estimates
    ("f24", "a24", "b24g", dict(sigma=1.3, radius=1, fused_candidate=False, gain=1.0, noise_k=3.0, channels="rgb"), 5),
    ("f24", "n24", "b24g", dict(sigma=2.2, radius=3, fused_candidate=True, gain=1.25, noise_k=6.0), 7),
    # channels "rgb": the luma's trust and choice on every RGB channel
    ("f13", "a13", "b13", dict(sigma=2.5, radius=2, fused_candidate=True, gain=1.0, noise_k=3.0, channels="rgb")),
    ("f24", "a24", "b24g", dict(sigma=8.0, radius=4, fused_candidate=False, gain=1.0, noise_k=0.0, channels="rgb")),
    ("f24", "n24", "b24g", dict(sigma=2.2, radius=3, fused_candidate=True, gain=1.25, noise_k=6.0, channels="rgb")),
    ("f7", "a7", "b7g", dict(sigma=4.0, radius=0, fused_candidate=False, gain=1.0, noise_k=3.0, channels="rgb")),
    ("f7g", "a7g", "b7g", dict(sigma=1.7, radius=2, fused_candidate=True, gain=1.7, noise_k=1.0, channels="rgb")),  # gray
)


def detail_images() -> dict[str, np.ndarray]:
    """Small float32 images on a 1/256 grid (short exact decimals): a smooth scene, its two sources with
    their own fine detail (A a texture, B edges) and a blurred fused image, as a VAE leaves it."""
    from latentfuse.model.image_processing.filters import gaussian

    rng = np.random.default_rng(2024)
    images = {}

    def q(x):
        return (np.round(np.clip(x, 0, 1) * 256).clip(0, 255) / 256).astype(np.float32)

    for tag, (h, w) in (("7", (7, 9)), ("13", (13, 16)), ("24", (24, 20))):
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        scene = 0.35 + 0.3 * np.sin(3 * xx + 2 * yy)[..., None] * np.array([1.0, 0.8, 0.6])
        # A's texture on the right, B's edges on the left: each source wins the selection somewhere
        texture = (0.15 * np.sin(1.3 * np.arange(w))[None, :, None] * np.cos(0.9 * np.arange(h))[:, None, None]
                   * (xx > 0.35)[..., None])
        edges = 0.2 * (((xx + 0.7 * yy) % 0.4 > 0.2) & (xx < 0.6))[..., None]
        a = scene + texture + 0.02 * rng.standard_normal((h, w, 3))
        b = scene[..., ::-1] * 0.9 + edges + 0.02 * rng.standard_normal((h, w, 3))
        f = gaussian(0.5 * (a + b), 1.5) + 0.01 * rng.standard_normal((h, w, 3))
        images["a" + tag], images["b" + tag], images["f" + tag] = q(a), q(b), q(f)
        images["b" + tag + "g"] = q(b.mean(-1))
        images["a" + tag + "g"], images["f" + tag + "g"] = q(a.mean(-1)), q(f.mean(-1))
    images["n24"] = q(images["a24"] + 0.08 * rng.standard_normal(images["a24"].shape))
    images["odd6x10"] = q(rng.uniform(0, 1, (6, 10)))  # 3 x 5 Haar coefficients: an odd count for the median
    images["tiny3x3"] = q(rng.uniform(0, 1, (3, 3)))   # one coefficient
    used = {n for case in DETAIL_CASES for n in case[:3]} | {"odd6x10", "tiny3x3", "a7g", "f7g", "a13", "b13g"}
    return {n: images[n] for n in sorted(used)}


def detail_vectors() -> dict:
    from latentfuse.model.image_processing.color import luma
    from latentfuse.model.image_processing.detail import DetailConfig, DetailSettings, noise_sigma, restore_detail
    from latentfuse.model.image_processing.filters import box_filter, gaussian

    images = detail_images()
    cases = []
    for fused, a, b, config, *strip in DETAIL_CASES:
        rows = strip[0] if strip else None
        out = restore_detail(images[fused], images[a], images[b], DetailConfig(**config), strip_rows=rows)
        assert out.dtype == np.float32 and out.shape == images[fused].shape
        if rows:  # strips reproduce the whole image's stage (up to the box filters' running-sum rounding)
            whole = restore_detail(images[fused], images[a], images[b], DetailConfig(**config))
            assert np.abs(out - whole).max() < 1e-6
        cases.append({"fused": fused, "a": a, "b": b, "config": config, "strip_rows": rows, "out": _short(out)})
    y = luma(images["a7g"])
    filters = ([{"kind": "gaussian", "image": "a7g", "sigma": s, "out": _short(gaussian(y, s))} for s in (0.7, 1.3, 3.3)] +
               [{"kind": "box", "image": "a7g", "radius": r, "out": _short(box_filter(y, r))} for r in (0, 1, 2, 5)] +
               [{"kind": "luma", "image": "a13", "out": _short(luma(images["a13"]))}])
    noise = [{"image": n, "sigma": noise_sigma(luma(images[n]))} for n in images]
    settings = []
    for section in (DETAIL_SECTION, DETAIL_SECTION_DEFAULTS):
        s = DetailSettings.from_dict(section)
        prompts = []
        for p in DETAIL_PROMPTS:
            configs = {}
            for mode in ("auto", "clean", "safe", "off"):
                cfg = s.config_for(p, mode)
                configs[mode] = None if cfg is None else ("clean" if cfg is s.clean else "safe")
            prompts.append({"prompt": p, "mode": s.mode_for(p), "config_for": configs})
        settings.append({"section": section, "parsed": s.to_dict(), "prompts": prompts})
    # the generator names the modules as they were when detail.json was written (now model.image_processing.*)
    return {"generator": "tests/cpp/make_vectors.py (model.detail, model.data.filters, model.data.color)",
            "images": {n: {"shape": list(img.shape), "values": _floats(img)} for n, img in images.items()},
            "cases": cases, "filters": filters, "noise_sigma": noise, "settings": settings}


def all_vectors() -> dict[str, dict]:
    return {"samplers.json": sampler_vectors(), "tokenizer.json": tokenizer_vectors(),
            "padding.json": padding_vectors(), "tiling.json": tiling_vectors(), "detail.json": detail_vectors()}


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
    from latentfuse.model.atomic import atomic_file

    written = []
    for name, obj in all_vectors().items():
        with atomic_file(directory / name) as tmp:
            tmp.write_text(dumps(obj) + "\n")
        written.append(directory / name)
    return written


if __name__ == "__main__":
    for path in write_vectors():
        print(path)
