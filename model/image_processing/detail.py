"""The pixel-space detail path: put the two sources' fine detail back into a decoded fused image.

An f = 8 VAE smooths what is finer than its latent cells, and Q^AB/F scores exactly those edges: the
VAE's round trip of a perfect fused image (the teacher label) loses a good part of its Q^AB/F. The
sources still hold that detail at full resolution, so after decoding (and after the working scale's
shrink back to the input size) the fused image F gets it back, on luminance, colour kept from F::

    Y_s      luma of source s (A, B) and of F                     (BT.601, image_processing.color)
    base(Y)  gaussian(Y, sigma)                                   (the band the VAE keeps)
    D_s      Y_s - base(Y_s);  D_F = Y_F - base(Y_F)              (the band the VAE loses; what F kept of it)
    noise    n_s = median |HH(Y_s)| / 0.6745                      (Donoho's MAD estimate on the diagonal
                                                                   Haar band: a source's noise level)
    trust    t_s = e_s / (e_s + (k·n_s)²),  e_s = box(D_s², r)    (local Wiener gain: 1 where the detail is
                                                                   well above the noise, small where it is
                                                                   noise-level)
    D_s'     t_s·D_s + (1 - t_s)·D_F                              (untrusted detail falls back to F's own)
    select   per pixel the candidate of largest local energy box(D², r) among D_A', D_B' (and D_F when
             ``fused_candidate``: F keeps its own detail where it is stronger than both sources', e.g. what
             a model restored from blurred sources), as one-hot masks feathered by box(·, r): D = Σ w_i·D_i
    Y_out    base(Y_F) + D_F + gain · (D - D_F)
    F_out    YCbCr(Y_out, Cb_F, Cr_F) -> RGB, clipped to [0, 1]

That is ``channels = "luma"``: colour stays F's, as the VAE left it (smooth, its edges blurred). With
``channels = "rgb"`` the trust t_s and the feathered choice weights w_i stay the ones computed on luma
above, and the detail goes into every RGB channel c of F instead (a gray source gives its plane to all
three), so colour edges come back too and the three channels pick the same source at every pixel::

    D_s,c    X_s,c - base(X_s,c);  D_F,c likewise;  D_s,c' = t_s·D_s,c + (1 - t_s)·D_F,c
    F_out,c  clip(F_c + gain · (Σ w_i·D_i,c' - D_F,c), 0, 1)

Q^AB/F, as the benchmarks compute it on colour images (per RGB channel, ``model.metrics``), scores those
colour edges: on real training scenes ``rgb`` is what lifts MEF and MFF past the plain average
(``docs/real-data-ceilings.md``).

On clean sources (n_s small) the fused image gets the sources' detail in place of its own; on noisy
sources it keeps its own detail where the sources' is noise-level, so the noise a model removed does not
come back.

Every step is a separable gaussian, a box mean or per-pixel arithmetic on whole arrays (the filters of
:mod:`latentfuse.model.image_processing.filters`, reflect borders), so the C++ host can run the same stage
line for line. The parameters live in :class:`DetailConfig` (its defaults are a neutral starting point, not a measured
choice): they depend on the VAE and its working scale and are chosen on training scenes only by
``latentfuse.bench.detail_tuning`` (``docs/real-data-ceilings.md``), so a model should carry its own.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.image_processing.color import luma, rgb_to_ycbcr, ycbcr_to_rgb
from latentfuse.model.image_processing.filters import box_filter, gaussian

MAD_TO_SIGMA = 0.6745  # median |N(0, 1)|
DETAIL_CHANNELS = ("luma", "rgb")  # DetailConfig.channels


@dataclass(frozen=True)
class DetailConfig:
    """Parameters of :func:`restore_detail` (see the module docstring for each symbol)."""

    sigma: float = 2.0             # base / detail split, in pixels of the image the stage runs on
    radius: int = 2                # local-energy window of the trust and the selection (2r + 1 pixels)
    fused_candidate: bool = True   # F's own detail competes in the selection
    gain: float = 1.0              # detail strength
    noise_k: float = 3.0           # noise gate in units of each source's noise estimate (0: off)
    channels: str = "luma"         # where the detail goes: "luma" (colour kept from F) or "rgb" (every channel)

    def __post_init__(self):
        if not self.sigma > 0:
            raise LatentfuseError(f"detail sigma must be positive, got {self.sigma}")
        if int(self.radius) != self.radius or self.radius < 0:
            raise LatentfuseError(f"detail radius must be a non-negative integer, got {self.radius}")
        if self.gain < 0 or self.noise_k < 0:
            raise LatentfuseError(f"detail gain and noise_k must be >= 0, got gain {self.gain}, noise_k {self.noise_k}")
        if self.channels not in DETAIL_CHANNELS:
            raise LatentfuseError(f"detail channels must be one of {', '.join(DETAIL_CHANNELS)}, got {self.channels!r}")

    def as_dict(self) -> dict:
        return asdict(self)


def _check(image: np.ndarray, what: str) -> np.ndarray:
    """``image`` checked, a 1-channel HxWx1 as HxW; its dtype kept (each strip goes to float64 on its own)."""
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3)) or min(arr.shape[:2]) < 2:
        raise LatentfuseError(f"detail path: {what} must be an HxW or HxWx3 image of at least 2x2, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise LatentfuseError(f"detail path: {what} must be float in [0, 1], got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return arr


def noise_sigma(y: np.ndarray) -> float:
    """Donoho's noise estimate of a gray image: median |HH| / 0.6745 on the diagonal Haar band."""
    return float(np.median(_abs_hh(y)) / MAD_TO_SIGMA)


def _abs_hh(y: np.ndarray) -> np.ndarray:
    """|HH| of the 2x2 Haar blocks of a gray image (odd last row / column dropped)."""
    h, w = (y.shape[0] // 2) * 2, (y.shape[1] // 2) * 2
    q = y[:h, :w]
    return np.abs((q[0::2, 0::2] - q[0::2, 1::2] - q[1::2, 0::2] + q[1::2, 1::2]) * 0.5)


def strip_noise_sigma(image: np.ndarray, rows: int) -> float:
    """:func:`noise_sigma` of ``image``'s luma, computed ``rows`` (even) rows at a time: the same Haar blocks
    and the same median, without a float64 copy of the whole image."""
    rows = max(2, rows // 2 * 2)
    h = (image.shape[0] // 2) * 2
    parts = [_abs_hh(luma(image[y:min(y + rows, h)])) for y in range(0, h, rows)]
    return float(np.median(np.concatenate([p.ravel() for p in parts])) / MAD_TO_SIGMA)


def detail_planes(image: np.ndarray, sigma: float) -> list[np.ndarray]:
    """X - gaussian(X, sigma) of every channel of ``image`` (one plane for a gray image)."""
    planes = [image] if image.ndim == 2 else [image[..., c] for c in range(image.shape[-1])]
    return [p - gaussian(p, sigma) for p in planes]


def trust(y: np.ndarray, detail: np.ndarray, cfg: DetailConfig, noise: float | None = None) -> np.ndarray:
    """The local Wiener gain of a source's luma detail against the source's noise level (1 when ``noise_k``
    is 0): e / (e + (k·n)²), e = box(D², r), n = :func:`noise_sigma` of the luma ``y`` (or ``noise``, the
    whole image's, when ``y`` is a strip of it)."""
    if cfg.noise_k <= 0:
        return np.ones_like(detail)
    floor = (cfg.noise_k * (noise_sigma(y) if noise is None else noise)) ** 2
    energy = box_filter(detail * detail, cfg.radius)
    return energy / np.maximum(energy + floor, 1e-12)


def select_weights(layers: list[np.ndarray], radius: int) -> list[np.ndarray]:
    """Per pixel the layer of largest local energy (box mean of D², ties to the first), as one-hot choice
    maps feathered by a box mean of the same radius: one weight map per layer, summing to 1."""
    energy = np.stack([box_filter(d * d, radius) for d in layers])
    pick = energy.argmax(axis=0)
    weights = []
    for i in range(len(layers)):
        w = (pick == i).astype(np.float64)
        weights.append(box_filter(w, radius) if radius > 0 else w)
    return weights


def detail_halo(cfg: DetailConfig) -> int:
    """Rows of context a strip needs on each side for its own rows to come out as in the whole image: the
    gaussian's reach (scipy's ``int(4 sigma + 0.5)``) plus one box radius per box filter chained after it
    (the trust's energy, the selection's energy, the feathering)."""
    return int(4.0 * float(cfg.sigma) + 0.5) + 3 * int(cfg.radius)


def restore_detail(fused: np.ndarray, a: np.ndarray, b: np.ndarray, config: DetailConfig | None = None,
                   strip_rows: int | None = None) -> np.ndarray:
    """``fused`` with the high-frequency detail of sources ``a`` and ``b`` restored (module docstring).

    All three are float images in [0, 1] of one size, HxW or HxWx3 (VIF: ``a`` visible, ``b`` infrared,
    gray). Returns float32 of ``fused``'s shape.

    ``strip_rows``: run the stage on strips of that many rows (each with :func:`detail_halo` rows of
    context above and below, the noise estimates taken on the whole sources), so its float64 planes cover
    a strip, not the image; None, or a strip as tall as the image: in one piece. A strip's rows equal the
    whole image's up to the rounding of the box filters' running sums (about 1e-16).
    """
    cfg = config or DetailConfig()
    f, a, b = _check(fused, "the fused image"), _check(a, "source A"), _check(b, "source B")
    if not (f.shape[:2] == a.shape[:2] == b.shape[:2]):
        raise LatentfuseError(f"detail path: sizes differ: fused {f.shape[:2]}, A {a.shape[:2]}, B {b.shape[:2]}")
    height = f.shape[0]
    if strip_rows is None or int(strip_rows) >= height:
        return _restore(f, a, b, cfg)
    rows = int(strip_rows)
    if rows < 2:
        raise LatentfuseError(f"detail path: a strip needs at least 2 rows, got {strip_rows}")
    noise = None
    if cfg.noise_k > 0:
        noise = [strip_noise_sigma(s, rows) for s in (a, b)]
    halo = detail_halo(cfg)
    out = np.empty(f.shape, np.float32)
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        lo, hi = max(0, y0 - halo), min(height, y1 + halo)
        out[y0:y1] = _restore(f[lo:hi], a[lo:hi], b[lo:hi], cfg, noise)[y0 - lo:y1 - lo]
    return out


def _restore(f: np.ndarray, a: np.ndarray, b: np.ndarray, cfg: DetailConfig, noise: list | None = None
             ) -> np.ndarray:
    """:func:`restore_detail` on checked images of one size (the whole image or one strip; ``noise``: the
    sources' noise estimates when the images are a strip)."""
    f, a, b = (x.astype(np.float64, copy=False) for x in (f, a, b))
    sources = (a, b)
    ys = [luma(s) for s in sources]
    rgb = cfg.channels == "rgb" and f.ndim == 3
    if rgb:  # every channel's detail; the luma's is their linear mix (a gaussian commutes with it)
        fused_planes = detail_planes(f, cfg.sigma)
        source_planes = [detail_planes(s, cfg.sigma) for s in sources]
        detail_f, source_luma = _luma_of(fused_planes), [_luma_of(p) for p in source_planes]
    else:
        yf = luma(f)
        detail_f = yf - gaussian(yf, cfg.sigma)
        source_luma = [y - gaussian(y, cfg.sigma) for y in ys]
    trusts = [trust(y, d, cfg, None if noise is None else n) for y, d, n in zip(ys, source_luma, noise or (None, None))]
    layers = [t * d + (1.0 - t) * detail_f for t, d in zip(trusts, source_luma)]
    if cfg.fused_candidate:
        layers.append(detail_f)
    weights = select_weights(layers, int(cfg.radius))
    if rgb:
        out = []
        for c, dfc in enumerate(fused_planes):
            candidates = [t * p[c if len(p) == 3 else 0] + (1.0 - t) * dfc for t, p in zip(trusts, source_planes)]
            if cfg.fused_candidate:
                candidates.append(dfc)
            chosen = sum(w * d for w, d in zip(weights, candidates))
            out.append(np.clip(f[..., c] + cfg.gain * (chosen - dfc), 0.0, 1.0))
        return np.stack(out, -1).astype(np.float32)
    chosen = sum(w * d for w, d in zip(weights, layers))
    y_out = np.clip(yf + cfg.gain * (chosen - detail_f), 0.0, 1.0)
    if f.ndim == 2:
        return y_out.astype(np.float32)
    ycc = rgb_to_ycbcr(f)
    ycc[..., 0] = y_out
    return ycbcr_to_rgb(ycc).astype(np.float32)


def _luma_of(planes: list[np.ndarray]) -> np.ndarray:
    """The luma of a list of channel planes (a gray image's one plane is its own)."""
    return planes[0] if len(planes) == 1 else luma(np.stack(planes, -1))


# ------------------------------------------------------------------------------ per model and per prompt

#: Which parameters run: ``clean`` for pairs known to be clean, ``safe`` for degraded ones, ``off`` none.
DETAIL_MODES = ("clean", "safe", "off")
#: Word prefixes of prompts whose degradation the stage copies back even with ``safe`` parameters
#: (rain, snow, infrared stripes: docs/real-data-ceilings.md, per-degradation tables).
OFF_PREFIXES = ("rain", "derain", "snow", "desnow", "strip", "destrip", "bands", "lines")


@dataclass(frozen=True)
class DetailSettings:
    """A model's detail path: its two parameter sets and the rule that picks one per prompt.

    Written as ``detail`` into ``model_index.json`` and the bundle manifest (:meth:`to_dict`); the C++ host
    reads the same section and applies the same rule (:meth:`mode_for`)."""

    clean: DetailConfig
    safe: DetailConfig
    clean_prompts: tuple[str, ...]  # normalised prompts that mean "nothing to restore": the task prompts
    off_prefixes: tuple[str, ...] = OFF_PREFIXES

    @classmethod
    def from_dict(cls, section: dict, where: str = "detail") -> "DetailSettings":
        try:
            return cls(clean=DetailConfig(**section["clean"]), safe=DetailConfig(**section["safe"]),
                       clean_prompts=tuple(normalize_prompt(p) for p in section["clean_prompts"]),
                       off_prefixes=tuple(section.get("off_prefixes", OFF_PREFIXES)))
        except (KeyError, TypeError) as err:
            raise LatentfuseError(f"{where}: needs 'clean' and 'safe' parameter sets ({', '.join(DetailConfig.__dataclass_fields__)}) "
                                  f"and 'clean_prompts': {err}") from None

    @classmethod
    def for_configs(cls, clean: DetailConfig, safe: DetailConfig) -> "DetailSettings":
        """Settings whose clean prompts are every phrasing of every task prompt (``model.data.prompts.
        TASK_PROMPTS``, the canonical one first): the prompts the model was trained with on clean pairs, which
        ask for the fusion and name nothing to restore."""
        from latentfuse.model.data.prompts import TASK_PROMPTS

        return cls(clean, safe, tuple(normalize_prompt(p) for phrasings in TASK_PROMPTS.values() for p in phrasings))

    def to_dict(self) -> dict:
        return {"clean": self.clean.as_dict(), "safe": self.safe.as_dict(), "clean_prompts": list(self.clean_prompts),
                "off_prefixes": list(self.off_prefixes)}

    def mode_for(self, prompt: str) -> str:
        """``clean`` for a clean prompt, ``off`` for one with a word starting with an off prefix, else ``safe``."""
        text = normalize_prompt(prompt)
        if text in self.clean_prompts:
            return "clean"
        words = re.findall(r"[a-z]+", text)
        return "off" if any(w.startswith(self.off_prefixes) for w in words) else "safe"

    def config_for(self, prompt: str, mode: str | None = None) -> DetailConfig | None:
        """The parameters to run for ``prompt`` (``mode``: ``auto``/None by :meth:`mode_for`, or forced), or None."""
        mode = check_detail_mode(mode)
        mode = self.mode_for(prompt) if mode == "auto" else mode
        return None if mode == "off" else getattr(self, mode)


def normalize_prompt(prompt: str) -> str:
    """Lower case, single spaces: the form prompts are compared in."""
    return " ".join(str(prompt).lower().split())


def check_detail_mode(mode: str | None) -> str:
    mode = "auto" if mode is None else str(mode)
    if mode not in ("auto",) + DETAIL_MODES:
        raise LatentfuseError(f"unknown detail mode {mode!r}: choose auto, {', '.join(DETAIL_MODES)}")
    return mode
