"""One fuse call, end to end (docs/design.md "Data flow"; MMAIF section 3.4.2, Algorithm 1).

    pipe = Pipeline.from_pretrained("bundle/", backend="onnxruntime")  # a bundle or a model directory
    result = pipe("vis.png", "ir.png", task="vif", prompt="remove the haze")
    result.save("fused.png")                                            # result.nfe, result.timings

The walk a reader follows: :class:`Pipeline` reads and pads the pair, asks the backend
(:mod:`latentfuse.runtime.backends`) to encode both images and the prompt, hands the backend's velocity to a
sampler (:mod:`latentfuse.runtime.samplers`, noise from :mod:`latentfuse.runtime.noise` on the host), has the backend
decode the final latent, and crops the result back to the input size.

Pre-processing: images are float32 [0, 1] (``model.image_io``: PNG / JPEG / TIFF, 8 or 16 bit, gray or
RGB); a gray image (infrared) is repeated to 3 channels for the VAE; the pair must have the same size
(or ``resize=True`` resamples B to A's size); both are enlarged by the model's working scale k
(``model.work_scale``: bicubic, k = 1 leaves them as they are), padded by reflection to a multiple of
16 pixels (VAE f=8 × DiT patch 2), and up to the backend's smallest supported size (a TensorRT profile
minimum), and mapped to [-1, 1]. Any size runs (:meth:`Pipeline.plan_windows`,
:mod:`latentfuse.runtime.backends.tiled`): the VAE encodes and decodes each image once, in tiles only over a
graph's size limit; the DiT runs in the model's window (``model.work_scale``), batched.
The result is cropped back, shrunk by k (k x k box means), clipped to [0, 1], given the sources' fine
detail back where the model has a detail path (``model.detail``: parameters chosen by the prompt, timed
as the ``Detail`` stage), and returned gray when both inputs were gray.

Prompts: the default is the task's canonical prompt (``model.data.prompts.CANONICAL_TASK_PROMPTS``).
A bundle ships the embeddings of the canonical prompts (its prompt cache), so they cost no text
encoder call (a checkpoint pipeline computes each canonical prompt once, then caches it the same
way); other prompts are memoised for the pipeline's lifetime (not while benchmarking, so the
latency table measures the text encoder whenever a real deployment would run it).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.flow import DEFAULT_START, check_start
from latentfuse.model.geometry import PIXEL_MULTIPLE
from latentfuse.model.image_processing.color import to_gray
from latentfuse.model.work_scale import check_window, check_work_scale, downscale, upscale
from latentfuse.runtime import samplers
from latentfuse.runtime.backends import Backend, get_backend
from latentfuse.runtime.backends.tiled import DIT_OVERLAP, GRID, VAE_OVERLAP, TiledBackend, balanced_side
from latentfuse.runtime.latency import LatencySummary, StageTimer, StageTimes, summarize
from latentfuse.runtime.memory import (DETAIL_PLANES, DETAIL_STRIP_ROWS, DIT_BYTES_PER_PX, FIDELITY_BYTES_PER_PX,
                                       MIN_VAE_TILE, RUNTIME_BYTES, VAE_MAX_SIDE, MemoryPlan, default_max_memory,
                                       format_bytes, parse_memory, vae_call_bytes)
from latentfuse.runtime.model_info import ModelInfo
from latentfuse.runtime.modes import DEFAULT_MODE, MODES

PAD_MULTIPLE = PIXEL_MULTIPLE  # VAE downsampling (8) × DiT patch size (2)
# Where a backend states no size limit (torch): the largest side, in working pixels, one DiT call takes,
# as a bundle exported with the default resolution range (it bounds the DiT's attention memory).
MAX_SIDE = 1024
MIN_SIDE = 2  # smallest image side: the detail path's filters and the metrics' gradients need 2x2
MAX_DIT_BATCH = 64  # DiT windows per graph call (the exported graphs' batch bound)
DEFAULT_SEED = 0




# ------------------------------------------------------------------------------------ result


@dataclass
class FusionResult:
    """The fused image (float32 [0, 1], HxWx3, or HxW when both inputs were gray) and how it was made."""

    image: np.ndarray
    nfe: int
    timings: StageTimes
    task: str = ""
    prompt: str = ""
    mode: str = DEFAULT_MODE
    sampler: str = ""
    steps: int = 0
    seed: int = DEFAULT_SEED
    info: dict = field(default_factory=dict)

    def save(self, path: str | os.PathLike, bit_depth: int = 8) -> Path:
        """Write the image (PNG / JPEG / TIFF by suffix) atomically, at 8 or 16 bits."""
        from latentfuse.model.image_io import write_image

        return write_image(path, self.image, bit_depth=bit_depth)


# ----------------------------------------------------------------------------- pre-processing


def load_image(image: Any, name: str = "image") -> np.ndarray:
    """A path or an array -> float32 [0, 1], HxW or HxWx3."""
    if isinstance(image, (str, os.PathLike)):
        from latentfuse.model.image_io import read_image

        return read_image(image)
    if not isinstance(image, np.ndarray):
        raise LatentfuseError(f"{name} must be an image path or a numpy array, got {type(image).__name__}")
    if (image.dtype == np.float32 and image.size and (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3))
            and 0.0 <= float(image.min()) and float(image.max()) <= 1.0):
        return image  # already what normalise_image makes (NaN / Inf fail the range test): no copy of it
    from latentfuse.model.image_io import normalise_image

    return normalise_image(image, name)


def match_pair(a: np.ndarray, b: np.ndarray, resize: bool = False, names=("A", "B")) -> tuple[np.ndarray, np.ndarray]:
    """Check that A and B have the same H×W; with ``resize`` resample B to A's size (bilinear, antialiased)."""
    for img, name in zip((a, b), names):
        if min(img.shape[:2]) < MIN_SIDE:
            raise LatentfuseError(f"{name} is {img.shape[1]}x{img.shape[0]} (W x H): latentfuse fuses images of at "
                                  f"least {MIN_SIDE}x{MIN_SIDE} pixels")
    if a.shape[:2] == b.shape[:2]:
        return a, b
    if not resize:
        (ha, wa), (hb, wb) = a.shape[:2], b.shape[:2]
        raise LatentfuseError(
            f"the pair differs in size: {names[0]} is {wa}x{ha}, {names[1]} is {wb}x{hb} (W x H); "
            "register / crop them to the same size, or pass --resize to resample B to A's size")
    from skimage.transform import resize as sk_resize

    out = sk_resize(b, a.shape[:2] + b.shape[2:], order=1, anti_aliasing=True, preserve_range=True)
    return a, np.clip(out, 0.0, 1.0).astype(np.float32)


def _padded(side: int, minimum: int = PAD_MULTIPLE, multiple: int = PAD_MULTIPLE) -> int:
    """``side`` rounded up to a multiple of ``multiple`` and to at least ``minimum``."""
    return max(side + (-side) % multiple, minimum + (-minimum) % multiple)


def pad_to_size(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reflect-pad HxWxC at the bottom / right to ``height`` x ``width`` (edge-pad a 1-px side)."""
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img
    return np.pad(img, ((0, height - h), (0, width - w), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")


def pad_to_multiple(img: np.ndarray, multiple: int = PAD_MULTIPLE) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad HxWxC at the bottom / right to a multiple of ``multiple``; returns the original (H, W)."""
    h, w = img.shape[:2]
    return pad_to_size(img, _padded(h, multiple, multiple), _padded(w, multiple, multiple)), (h, w)


def to_model_range(imgs: Sequence[np.ndarray]) -> np.ndarray:
    """HxWx3 [0, 1] images -> [B, 3, H, W] float32 in [-1, 1] (one array, filled in place)."""
    batch = np.empty((len(imgs), 3) + imgs[0].shape[:2], np.float32)
    for i, img in enumerate(imgs):
        batch[i] = np.transpose(img, (2, 0, 1))
    batch *= 2.0
    batch -= 1.0
    return batch


def from_model_range(batch: np.ndarray, size: tuple[int, int], in_place: bool = False) -> np.ndarray:
    """[1, 3, H', W'] in [-1, 1] -> HxWx3 [0, 1], cropped to ``size``; ``in_place``: computed in ``batch``'s
    own memory (float32), which it overwrites, rather than in new arrays."""
    h, w = size
    if in_place and batch.dtype == np.float32 and batch.flags.writeable:
        img = batch[0, :, :h, :w]
        img += 1.0
        img *= 0.5
        np.clip(img, 0.0, 1.0, out=img)
        return np.transpose(img, (1, 2, 0))
    img = np.transpose(batch[0, :, :h, :w], (1, 2, 0))
    return np.clip((img + 1.0) * 0.5, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------- pipeline


class Pipeline:
    """A backend plus the host-side steps (I/O, padding, prompt cache, sampler) of a fuse call.

    ``info``: the model's metadata (:class:`latentfuse.runtime.model_info.ModelInfo`: working scale, window,
    sampler defaults, detail path, fidelity decoder); None: that of the model ``backend`` was loaded from
    (``ModelInfo.of``)."""

    def __init__(self, backend: Backend, info: ModelInfo | None = None, prompt_cache: dict | None = None,
                 defaults: dict | None = None):
        self.backend = backend
        self.info = info = ModelInfo.of(backend) if info is None else info
        # prompt -> (embeds [1, L, d], mask [1, L]); the bundle's canonical prompts preloaded
        self.prompt_cache: dict[str, tuple[np.ndarray, np.ndarray]] = dict(prompt_cache or {})
        self._memo: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.memoize_prompts = True  # off while benchmarking, so T5 latency is measured, not memoised
        self.defaults = {"sampler": samplers.DEFAULT_SAMPLER, "steps": samplers.DEFAULT_STEPS,
                         "g": None, "prior": "gaussian", "prior_sigma": None, **info.sampler_defaults,
                         **(defaults or {})}
        self.min_size = int(backend.min_image_size() or PAD_MULTIPLE)
        self.work_scale = check_work_scale(info.work_scale, "the model's work_scale")
        self.window = check_window(info.window, "the model's window")
        self.tile_overlap = DIT_OVERLAP  # pixels shared by neighbouring DiT windows (runtime.backends.tiled)
        self.max_dit_batch = MAX_DIT_BATCH  # DiT windows per graph call (also capped by the backend's)
        self.vae_max_side = VAE_MAX_SIDE  # largest side of one VAE call unless ``tile`` says otherwise
        self.max_memory: int | None = None  # the budget of a call (bytes); None: default_max_memory()
        self.detail = info.detail  # the model's detail path after decoding, or None
        self.text_encoder_calls = 0

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, backend: str | None = None, **options) -> "Pipeline":
        """A pipeline over a model directory or a deployment bundle on ``backend`` (diffusers' habit).

        A bundle (``manifest.json``) runs on ``onnxruntime`` (the default) or ``tensorrt`` (:meth:`from_bundle`);
        a model directory (``model_index.json``) on ``torch`` (the default, :meth:`from_checkpoint`), or on
        ``onnxruntime`` / ``tensorrt`` through its cached export (:func:`cached_export`: exported once, then
        reused). ``options`` go to the backend (``threads=``, ``providers=``, ``compile=``, ...)."""
        from latentfuse.runtime.backends import backend_source
        from latentfuse.runtime.manifest import MANIFEST_NAME

        root = Path(path)
        if (root / MANIFEST_NAME).is_file():
            return cls.from_bundle(root, backend or "onnxruntime", **options)
        backend = backend or "torch"
        if backend_source(backend) == "checkpoint":
            return cls.from_checkpoint(root, backend, **options)
        return cls.from_bundle(cached_export(root, backend), backend, **options)

    @classmethod
    def from_bundle(cls, directory: str | os.PathLike, backend: str = "onnxruntime", **options) -> "Pipeline":
        """A pipeline over a deployment bundle (``latentfuse export``) on ``onnxruntime`` or ``tensorrt``."""
        from latentfuse.runtime.backends import backend_source
        from latentfuse.runtime.manifest import open_bundle

        if backend_source(backend) != "bundle":
            raise LatentfuseError(f"the {backend} backend runs a model directory: use Pipeline.from_checkpoint")
        be = get_backend(backend, bundle=directory, **options)
        bundle = getattr(be, "bundle", None) or open_bundle(directory)
        return cls(be, ModelInfo.from_manifest(bundle), prompt_cache=bundle.prompt_cache_by_text())

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike, backend: str = "torch", **options) -> "Pipeline":
        """A pipeline over a model directory (``model.components``) on the reference torch backend."""
        from latentfuse.runtime.backends import backend_source

        if backend_source(backend) != "checkpoint":
            raise LatentfuseError(f"the {backend} backend runs a deployment bundle: use Pipeline.from_bundle "
                                  f"(export one with `latentfuse export --checkpoint {directory} --out BUNDLE`)")
        be = get_backend(backend, checkpoint=directory, **options)
        return cls(be, ModelInfo.from_model_index(be.components))

    @classmethod
    def from_components(cls, components, **options) -> "Pipeline":
        """A torch pipeline over in-memory :class:`latentfuse.model.components.FusionComponents`."""
        return cls(get_backend("torch", components=components, **options), ModelInfo.from_model_index(components))

    # ------------------------------------------------------------------ prompts
    def encode_prompt(self, prompt: str) -> tuple[np.ndarray, np.ndarray, bool]:
        """(embeds [1, L, d], mask [1, L], cache_hit) for one prompt."""
        key = " ".join(str(prompt).split())
        if not key:
            raise LatentfuseError("the prompt is empty")
        if key in self.prompt_cache:
            embeds, mask = self.prompt_cache[key]
            return embeds, mask, True
        if self.memoize_prompts and key in self._memo:
            embeds, mask = self._memo[key]
            return embeds, mask, True
        embeds, mask = self.backend.encode_prompts([key])
        self.text_encoder_calls += 1
        if key in _canonical_prompts():
            # what a bundle ships precomputed: a checkpoint pipeline computes it once, then caches it alike
            self.prompt_cache[key] = (embeds, mask)
        elif self.memoize_prompts:
            self._memo[key] = (embeds, mask)
        return embeds, mask, False

    @staticmethod
    def default_prompt(task: str) -> str:
        from latentfuse.model.data.prompts import CANONICAL_TASK_PROMPTS
        from latentfuse.model.data.tasks import check_task

        return CANONICAL_TASK_PROMPTS[check_task(task)]

    # ------------------------------------------------------------------ the call
    def prepare(self, a: Any, b: Any, resize: bool = False, tile: bool | int | None = None
                ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], bool, Backend]:
        """Read, check, enlarge, pad and scale the pair: ([2, 3, H', W'] in [-1, 1], the two images as read
        (float32 [0, 1], input size, HxW or HxWx3), both gray, the backend to run: ``self.backend``, or a
        windowed / tiled view of it, :meth:`plan_windows`)."""
        images, sources, gray, backend, _ = self._prepare(a, b, resize, tile, None)
        return images, sources, gray, backend

    def _prepare(self, a: Any, b: Any, resize: bool, tile: Any, max_memory: Any, fidelity: bool | None = None):
        """:meth:`prepare`, and the call's :class:`MemoryPlan`."""
        img_a = load_image(a, f"image A ({a})" if isinstance(a, (str, os.PathLike)) else "image A")
        img_b = load_image(b, f"image B ({b})" if isinstance(b, (str, os.PathLike)) else "image B")
        img_a, img_b = match_pair(img_a, img_b, resize, names=(_label(a, "A"), _label(b, "B")))
        gray = img_a.ndim == 2 and img_b.ndim == 2
        h, w = img_a.shape[:2]
        k = self.work_scale
        ph, pw = _padded(k * h, self.min_size), _padded(k * w, self.min_size)
        plan = self.plan_memory(ph, pw, (h, w), tile, max_memory, sources=img_a.nbytes + img_b.nbytes,
                                fidelity=fidelity)
        backend = self.backend
        # a pair large enough to tile the VAE is where memory, not the last 20 % of speed, decides
        self.backend.low_memory = plan.vae_tile is not None or plan.fidelity_rows is not None
        if plan.dit_window or plan.vae_tile or plan.fidelity_rows:
            backend = TiledBackend(self.backend, plan.dit_window, plan.vae_tile, overlap=self.tile_overlap,
                                   max_batch=plan.dit_batch, fidelity_rows=plan.fidelity_rows,
                                   fidelity_halo=self.info.fidelity_halo)
        images = np.empty((2, 3, ph, pw), np.float32)
        for i, img in enumerate((img_a, img_b)):  # one image's padded copy at a time, into the batch
            if img.ndim == 2:  # gray: its one plane into all three channels (to_rgb), without a 3-channel copy
                images[i] = pad_to_size(upscale(img, k)[..., None], ph, pw)[..., 0]
            else:
                images[i] = np.transpose(pad_to_size(upscale(img, k), ph, pw), (2, 0, 1))
        images *= 2.0  # to_model_range's arithmetic, in place
        images -= 1.0
        return images, (img_a, img_b), gray, backend, plan

    def plan_memory(self, height: int, width: int, size: tuple[int, int] | None = None, tile: Any = None,
                    max_memory: Any = None, sources: int | None = None, fidelity: bool | None = None) -> MemoryPlan:
        """The :class:`MemoryPlan` of a padded ``height`` x ``width`` pair (working pixels; ``size``: the input
        size, ``sources``: the bytes of the two images as read) within ``max_memory`` bytes (or '3G'; None:
        ``self.max_memory``, else :func:`default_max_memory`).

        Each stage's peak is estimated (module constants) as the runtime, the whole-image arrays it needs
        (the sources as read, the batch it reads or writes) and one call's work; the VAE tile side, the DiT
        windows per call and the detail strip are the largest, up to their speed caps, that keep every
        stage within the budget. A budget even the smallest of them cannot meet is a LatentfuseError.

        ``fidelity``: whether the call runs the fidelity decoder (None: where the backend has one); then the
        model-range pair is held from the encoder to that stage, and the decoder runs whole, or in strips of
        ``fidelity_rows`` rows (each with the model's halo of context rows) where the image is taller than the
        graph's limit or its call would not fit the budget."""
        budget = parse_memory(max_memory if max_memory is not None else self.max_memory or default_max_memory())
        h, w = size or (height // self.work_scale, width // self.work_scale)
        window, vae_bound = self.plan_windows(height, width, tile)
        src = 2 * 3 * 4 * h * w if sources is None else int(sources)
        base = RUNTIME_BYTES + src
        image_f32 = 3 * 4 * height * width  # one padded image, float32
        if fidelity is None:
            fidelity = self.info.has_fidelity
        keep = 2 * image_f32 if fidelity else 0  # the model-range pair, held for the fidelity decoder
        latents = 4 * 16 * 4 * (height // 8) * (width // 8)  # z_a, z_b, the sampler's state and output
        need = f"a {w}x{h} pair"

        def fail(what: str, least: int):
            raise LatentfuseError(f"--max-memory {format_bytes(budget)} cannot be met: {need} needs at least "
                                  f"{format_bytes(least)} here ({what}); raise it or fuse a smaller pair")

        # VAE: encode holds the model-range pair, decode its blended output (+ one weight plane); one tile
        # of one image per call when tiled, the pair in one call when whole
        def vae_peak(tile_size: tuple[int, int] | None) -> int:
            if tile_size is None:
                call = 2 * vae_call_bytes(height, width)
            else:  # the tiles TiledBackend cuts: on the grid, the overlap clamped to half a tile
                lim = (tile_size[0] // GRID * GRID, tile_size[1] // GRID * GRID)
                ov = min(VAE_OVERLAP, min(lim) // 2) // GRID * GRID
                call = vae_call_bytes(balanced_side(height, lim[0], ov), balanced_side(width, lim[1], ov))
            return base + latents + max(2 * image_f32, keep + image_f32 * 4 // 3) + call

        vae_tile = vae_bound
        if vae_tile is None and vae_peak(None) > budget:
            vae_tile = (min(height, self.vae_max_side), min(width, self.vae_max_side))
        if vae_tile is not None:
            side = max(vae_tile)
            while vae_peak((min(vae_tile[0], side), min(vae_tile[1], side))) > budget:
                if side - GRID < MIN_VAE_TILE:
                    fail(f"the VAE on {MIN_VAE_TILE} px tiles", vae_peak((MIN_VAE_TILE, MIN_VAE_TILE)))
                side -= GRID
            vae_tile = (min(vae_tile[0], side), min(vae_tile[1], side))
            if vae_tile[0] >= height and vae_tile[1] >= width:
                vae_tile = None
        # DiT: the latents and one chunk of windows
        cap = self.backend.max_batch_size()
        dit_batch = self.max_dit_batch if cap is None else min(self.max_dit_batch, cap)
        win = window or (height, width)
        per_window = DIT_BYTES_PER_PX * win[0] * win[1]
        room = budget - base - latents
        room -= keep
        if room < per_window:
            fail("the DiT on one window", base + latents + keep + per_window)
        dit_batch = max(1, min(dit_batch, room // per_window))
        dit_peak = base + latents + keep + (dit_batch if window else 1) * per_window  # no window: one whole-latent call
        # fidelity decoder: the pair, the decoded image and the result, and one strip's call with its halo rows
        fidelity_rows, fidelity_peak = None, 0
        if fidelity:
            halo = self.info.fidelity_halo
            limit = (self.backend.max_image_size() or (MAX_SIDE, MAX_SIDE))[0]
            fixed = base + 4 * image_f32
            per_row = FIDELITY_BYTES_PER_PX * width
            if height <= limit and fixed + per_row * height <= budget:
                fidelity_peak = fixed + per_row * height
            else:
                rows = min(height, limit - 2 * halo, (budget - fixed) // per_row - 2 * halo) // GRID * GRID
                if rows < GRID:
                    fail("the fidelity decoder on 16-row strips", fixed + per_row * (GRID + 2 * halo))
                fidelity_rows = None if rows >= height else int(rows)
                fidelity_peak = fixed + per_row * min(height, rows + 2 * halo)
        # detail path: the decoded image, the result, and one strip's float64 planes with its context rows
        detail_rows, detail_peak = None, 0
        if self.detail is not None:
            from latentfuse.model.image_processing.detail import detail_halo

            halo = max(detail_halo(self.detail.clean), detail_halo(self.detail.safe))
            fixed = base + image_f32 + 3 * 4 * h * w
            per_row = DETAIL_PLANES * 8 * w
            rows = min(h, DETAIL_STRIP_ROWS, (budget - fixed) // per_row - 2 * halo)
            if rows < min(GRID, h):  # strips of 16 rows at least, or the whole of a shorter image
                fail("the detail path on 16-row strips", fixed + per_row * (min(GRID, h) + 2 * halo))
            detail_rows = None if rows >= h else int(rows)
            detail_peak = fixed + per_row * (min(h, rows + 2 * halo))
        prepare_peak = base + 3 * image_f32  # the model-range pair and one image's padded copy
        peak = max(prepare_peak, vae_peak(vae_tile), dit_peak, fidelity_peak, detail_peak)
        return MemoryPlan(budget, window, vae_tile, int(dit_batch), detail_rows, int(peak), fidelity_rows)

    def plan_windows(self, height: int, width: int, tile: Any = None) -> tuple[tuple[int, int] | None,
                                                                              tuple[int, int] | None]:
        """(DiT window, VAE tile) in pixels for a padded ``height`` x ``width`` pair; None where the
        whole image goes through in one call. The DiT runs in the model's window, within the graph's
        size limit (:data:`MAX_SIDE` where the backend states none); the VAE sees whole images up to
        :data:`VAE_MAX_SIDE` or an explicit ``tile`` side, within that limit."""
        limit = self.backend.max_image_size() or (MAX_SIDE, MAX_SIDE)
        dit = limit
        if self.window:
            dit = (min(dit[0], self.window), min(dit[1], self.window))
        side = self.vae_max_side if tile in (None, False, True) else int(tile)
        if side < 2 * PAD_MULTIPLE:
            raise LatentfuseError(f"--tile needs at least {2 * PAD_MULTIPLE} px, got {side}")
        vae = (min(side, limit[0]), min(side, limit[1]))
        fits = lambda bound: height <= bound[0] and width <= bound[1]  # noqa: E731
        return (None if fits(dit) else dit), (None if fits(vae) else vae)

    def __call__(
        self,
        a: Any,
        b: Any,
        task: str = "vif",
        prompt: str | None = None,
        mode: str = DEFAULT_MODE,
        sampler: str | None = None,
        steps: int | None = None,
        g: float | None = None,
        seed: int = DEFAULT_SEED,
        resize: bool = False,
        prior: str | None = None,
        tile: bool | int | None = None,
        detail: str | None = None,
        max_memory: int | str | None = None,
        fidelity: float | None = None,
        start: float | None = None,
    ) -> FusionResult:
        """Fuse images ``a`` and ``b`` (paths or arrays) for ``task``; see the module docstring.

        ``tile``: the largest VAE tile side in working pixels (an int), overriding the automatic choice
        (whole images up to the backend's limit, :meth:`plan_windows`); ``True`` / ``None``: automatic.
        ``detail``: the model's pixel-space detail path (``model.detail``): ``auto`` / None picks its
        parameters from the prompt (``DetailSettings.mode_for``), ``clean`` / ``safe`` force a set, ``off``
        skips it; a model without one runs none. ``auto`` runs none where the fidelity decoder ran.
        ``fidelity``: the weight w of the model's fidelity decoder (``model.fidelity``), the learned stage that
        gives the decoded image the sources' detail and restores it: F + w (fidelity(F, A, B, P) - F); None: 1
        where the model has one; 0 skips it (the VAE's image alone).
        ``max_memory``: the call's memory budget, bytes or '3G' (:meth:`plan_memory`; None: ``self.max_memory``,
        else half the machine's memory): the VAE tiles, DiT windows per call and detail strips are sized to it.
        ``start``: where the flow starts, t0 in [0, 1) (``model.flow.DEFAULT_START``): 0 samples from the prior,
        t0 > 0 from the regression DiT's estimate noised to t0 (one more DiT call); None: the model's default.
        """
        from latentfuse.model.data.tasks import check_task
        from latentfuse.model.image_processing.detail import check_detail_mode, restore_detail

        task = check_task(task)
        detail_mode = check_detail_mode(detail)
        if mode not in MODES:
            raise LatentfuseError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
        self.backend.require_head(mode)
        if mode == "regression":
            # the flow head's settings are refused, not ignored: regression is the default mode, so a user's
            # --steps 10 without --mode flow would otherwise do nothing, silently
            given = [f"{flag} {value}" for flag, value, unset in (
                ("--sampler", sampler, (None, "regression")), ("--steps", steps, (None, 1)), ("--g", g, (None,)),
                ("--prior", prior, (None,)), ("--start", start, (None,))) if value not in unset]
            if given:
                raise LatentfuseError(f"--mode regression makes one network call and takes no {', '.join(given)}: "
                                      "those set the flow head's sampling; add --mode flow")
            sampler_name, steps = "regression", 1
        else:
            sampler_name = sampler or self.defaults["sampler"]
            if sampler_name == "regression":
                raise LatentfuseError("the regression sampler needs --mode regression")
            samplers.get_sampler(sampler_name)  # unknown names fail before any work
            steps = int(steps if steps is not None else self.defaults["steps"])
            start = check_start(start if start is not None else self.defaults.get("start", DEFAULT_START))
            if start:
                self.backend.require_head("regression")
        if g is None and samplers.get_sampler(sampler_name).stochastic:
            g = self.defaults.get("g")
            g = samplers.DEFAULT_G if g is None else float(g)
        prompt = prompt if prompt is not None else self.default_prompt(task)

        if max_memory is not None:
            parse_memory(max_memory)  # a bad value fails before any work
        weight = check_fidelity_weight(fidelity, self.info.has_fidelity)
        timer = StageTimer(self.backend.synchronize)
        images, sources, gray, backend, plan = self._prepare(a, b, resize, tile, max_memory, weight > 0)
        size = sources[0].shape[:2]
        with timer.stage("VAE-Enc"):
            latents = backend.encode_images(images)
        if not weight:
            del images  # the model-range pair is not needed past the encoder, unless the fidelity decoder reads it
        z_a, z_b = latents[:1], latents[1:2]
        with timer.stage("T5"):
            embeds, mask, hit = self.encode_prompt(prompt)
        with timer.stage("DiT"):
            if mode == "regression":
                result = samplers.sample("regression", lambda _z, _t: backend.regress(z_a, z_b, embeds, mask),
                                         z_a, seed=seed)
            else:
                prior_name = prior or self.defaults["prior"]
                sigma = self.defaults.get("prior_sigma")
                extra = {} if sigma is None else {"sigma": float(sigma)}
                z0, params = samplers.initial_latent(prior_name, z_a, seed, z_a, z_b, **extra)
                if start:  # the flow refines the regression DiT's estimate (model.flow.DEFAULT_START)
                    z0 = samplers.start_latent(z0, backend.regress(z_a, z_b, embeds, mask), start)
                t_batch = np.empty((z_a.shape[0],), np.float32)

                def velocity(z, t):
                    t_batch.fill(t)
                    return backend.velocity(z, t_batch, z_a, z_b, embeds, mask)

                result = samplers.sample(sampler_name, velocity, z0, steps=steps, g=g, seed=seed, prior=params,
                                         start=start)
                if start:  # and the regression call
                    result = dataclasses.replace(result, nfe=result.nfe + 1)
        with timer.stage("VAE-Dec"):
            decoded = backend.decode(np.asarray(result.latent, np.float32))
        if weight:
            with timer.stage("Fidelity"):
                refined = backend.fidelity(decoded, images[:1], images[1:2], embeds, mask)
                if weight != 1.0:
                    refined -= decoded
                    refined *= weight
                    refined += decoded
                decoded = refined
            del images, refined
        k = self.work_scale
        image = downscale(from_model_range(decoded, (k * size[0], k * size[1]), in_place=True), k)
        del decoded
        detail_cfg = None
        if self.detail is not None and not (weight and detail_mode == "auto"):
            detail_cfg = self.detail.config_for(prompt, detail_mode)
        if detail_cfg is not None:
            with timer.stage("Detail"):
                image = restore_detail(image, *sources, detail_cfg, strip_rows=plan.detail_rows)
        if gray:
            image = to_gray(image)
        times = timer.finish(result.nfe, hit)
        return FusionResult(image=image, nfe=result.nfe, timings=times, task=task, prompt=prompt, mode=mode,
                            sampler=result.sampler, steps=steps, seed=seed,
                            info={"backend": self.backend.name, "size": size, "work_scale": k,
                                  "detail": "off" if detail_cfg is None else detail_cfg.as_dict(),
                                  "fidelity": weight, "start": start if mode == "flow" else None,
                                  "tiled": backend is not self.backend, "memory": plan.as_dict(),
                                  "g": g if samplers.get_sampler(sampler_name).stochastic else 0.0})

    # ------------------------------------------------------------------ timing
    def benchmark(self, a: Any, b: Any, warmup: int = 1, runs: int = 3, label: str = "", **kwargs) -> LatencySummary:
        """Run ``warmup`` untimed then ``runs`` timed fuse calls; median per stage (runtime.latency)."""
        if runs < 1:
            raise LatentfuseError(f"benchmark needs at least one timed run, got {runs}")
        memo, self.memoize_prompts = self.memoize_prompts, False
        try:
            for _ in range(max(0, int(warmup))):
                self(a, b, **kwargs)
            times = [self(a, b, **kwargs).timings for _ in range(int(runs))]
        finally:
            self.memoize_prompts = memo
        return summarize(times, label or self.backend.name)


EXPORTERS = "latentfuse.exporters"  # entry point group: name = "module:function(model_dir, backend) -> bundle dir"


def cached_export(model_dir: str | os.PathLike, backend: str = "onnxruntime") -> Path:
    """The deployment bundle of ``model_dir`` for ``backend`` (onnxruntime / tensorrt), from the exporter installed
    under the entry point group :data:`EXPORTERS` (latentfuse's own: ``latentfuse.export.bundle_cache``, which
    exports once into the user cache and reuses it). The runtime sits below export, so it finds the exporter
    this way rather than by importing it; none installed is one error line saying what to do."""
    from importlib.metadata import entry_points

    found = sorted(entry_points(group=EXPORTERS), key=lambda ep: ep.name)
    if not found:
        raise LatentfuseError(
            f"the {backend} backend runs a deployment bundle and no exporter is installed to make one from "
            f"{model_dir} (entry point group {EXPORTERS!r}, declared by latentfuse's pyproject.toml): reinstall "
            f"latentfuse (`pip install -e .` in a checkout), or export the bundle with `latentfuse export "
            f"--checkpoint {model_dir} --out BUNDLE` and pass BUNDLE")
    return Path(found[0].load()(model_dir, backend))


@functools.lru_cache(maxsize=1)
def _canonical_prompts() -> frozenset[str]:
    from latentfuse.model.data.prompts import canonical_prompts

    return frozenset(" ".join(p.split()) for p in canonical_prompts().values())


def check_fidelity_weight(weight: Any, available: bool) -> float:
    """The fidelity decoder's weight for a call: ``weight`` (None: 1.0 where the model has one, else 0) checked
    to lie in [0, 1]; a weight for a model without the decoder is an error, not silently nothing."""
    if weight is None:
        return 1.0 if available else 0.0
    try:
        value = float(weight)
    except (TypeError, ValueError):
        raise LatentfuseError(f"--fidelity takes a number in [0, 1], got {weight!r}") from None
    if not 0.0 <= value <= 1.0:
        raise LatentfuseError(f"--fidelity takes a number in [0, 1], got {weight!r}")
    if value and not available:
        raise LatentfuseError("--fidelity: this model has no fidelity decoder (model.fidelity); it runs without one")
    return value


def _label(x: Any, default: str) -> str:
    return str(x) if isinstance(x, (str, os.PathLike)) else default


__all__ = ["FusionResult", "Pipeline", "cached_export", "load_image", "match_pair", "pad_to_multiple", "PAD_MULTIPLE",
           "MODES"]
