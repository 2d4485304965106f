"""Windows: the DiT in the model's window, batched; the VAE on whole images, tiled only over a graph limit.

A wrapper with the :class:`~latentfuse.runtime.backends.base.Backend` interface, so the pipeline and the samplers
run unchanged. It splits the two kinds of work differently:

* **DiT** (velocity / regression): the model's window (``model.work_scale``: the crop its DiT was
  trained on) or a graph's size limit, applied in latent space. Every sampler call cuts Z_t, Z_a, Z_b
  into overlapping latent windows, runs them through the graph **as one batch** (or chunks of at most
  ``max_batch`` rows: the graph's dynamic batch dim, a TensorRT profile's maximum batch), and blends
  the outputs with weights that ramp linearly over the overlap ("feathering"). Blending the *velocity*
  at every sampler step, not the final images, is MultiDiffusion's joint-diffusion rule (Bar-Tal et
  al. 2023, Eq. 5 with per-pixel averaging weights): the windows agree on one latent trajectory, so no
  seams appear between independently sampled windows.
* **VAE**: each image is encoded once and the result decoded once. Only an image larger than the
  graph accepts (a bundle's verified maximum, an engine profile's, or an explicit ``vae_tile``) is
  split, into the fewest tiles within that limit, spread evenly (:func:`balanced_side`), overlapping by
  ``vae_overlap`` (64 px by default): encoder tiles are blended in latent space, decoder tiles in pixel
  space (the tiled-VAE scheme of diffusers' ``AutoencoderKL.tiled_decode``); the seam error this leaves
  is checked in ``tests/runtime/test_tiled.py``.

Streaming: a tiled image goes through the VAE one image and one tile per call, and every output (VAE
tiles, chunks of DiT windows) is blended into the result as it comes (:class:`Blender`), so the memory
of a call is bounded by its tile or chunk, not by the image; the pipeline sizes both from its memory
budget (``Pipeline.plan_memory``).

* **Fidelity decoder** (``model.fidelity``): a local network, so a tall image runs in strips of rows
  (:func:`fidelity_strips`, ``fidelity_rows`` rows each, spread evenly), each with the model's halo of
  context rows on both sides (``fidelity_halo``, the model's ``ModelInfo.fidelity_halo``: ``receptive_halo`` on
  the 16-px grid, from the bundle's manifest); only each strip's own rows are kept, so the result equals the whole image's
  (``tests/runtime/test_fidelity.py``), with no blending.

Windows start on the 16-pixel / 2-latent grid, so the DiT's patches and the VAE's downsampling align
across windows. Each DiT window sees only its own context (attention does not cross windows): that is
what a model trained on crops of the window's size expects.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import numpy as np

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.geometry import LATENT_FACTOR, MIN_SIDE, PIXEL_MULTIPLE
from latentfuse.runtime.backends.base import Backend, WrappedBackend

GRID = PIXEL_MULTIPLE  # pixels per DiT patch (8 x 2): window starts and sizes are multiples of this
# pixels shared by neighbouring VAE tiles. Tiles differ from the whole image mostly through their own GroupNorm
# statistics and attention, not through the overlap's width: on a 1024x768 pair (bundled default, ONNX Runtime)
# even tiles overlapping by 128 / 64 / 32 px come out 39.1 / 38.4 / 38.1 dB from the whole-image fusion, while
# 64 px against 128 px cuts a 12-MP pair's VAE work from 1.41x to 1.18x its pixels
VAE_OVERLAP = 64
# pixels shared by neighbouring DiT windows: 32 against 64 costs the flow DiT 0.61x the time on real training
# scenes for outputs within 38 dB (mean PSNR) and Q^AB/F within 0.001 (docs/design.md, working scale and windows)
DIT_OVERLAP = 32

Window = tuple[int, int, int, int]  # (y, x, h, w)


def window_starts(size: int, window: int, overlap: int, step: int) -> list[int]:
    """Start offsets of windows of ``window`` covering [0, size) with at least ``overlap`` shared,
    every start a multiple of ``step`` and the last window flush with the end."""
    if window >= size:
        return [0]
    stride = max(step, (window - overlap) // step * step)
    starts = list(range(0, size - window, stride))
    starts.append(size - window)
    return sorted(set(starts))


def ramp(n: int, overlap: int) -> np.ndarray:
    """1-D feathering weights: linear rise over ``overlap`` samples at both ends, 1 inside, never 0."""
    x = np.arange(n, dtype=np.float32)
    ov = max(int(overlap), 1)
    return np.minimum(1.0, np.minimum((x + 1) / (ov + 1), (n - x) / (ov + 1))).astype(np.float32)


class Blender:
    """A weighted average built in place: :meth:`add` each window's output as it comes (feathered by
    :func:`ramp`), :meth:`result` divides once. Only the output and one weight plane are held, never the
    list of window outputs."""

    def __init__(self, out_shape: Sequence[int], overlap: int):
        self.out = np.zeros(tuple(out_shape), np.float32)
        self.weight = np.zeros(tuple(out_shape[-2:]), np.float32)
        self.overlap = int(overlap)

    def add(self, value: np.ndarray, window: Window, rows: slice = slice(None)) -> None:
        """Accumulate ``value`` (the output on ``window`` of the batch rows ``rows``)."""
        y, x, h, w = window
        wgt = ramp(h, self.overlap)[:, None] * ramp(w, self.overlap)[None, :]
        self.out[rows, ..., y:y + h, x:x + w] += value * wgt
        if rows.start in (None, 0):  # the weight once per window, not once per batch row
            self.weight[y:y + h, x:x + w] += wgt

    def result(self) -> np.ndarray:
        self.out /= self.weight
        return self.out


def blend(calls, out_shape: Sequence[int], windows, overlap: int) -> np.ndarray:
    """Weighted average of ``calls[i]`` (outputs on ``windows[i]`` = (y, x, h, w)) into ``out_shape``."""
    blender = Blender(out_shape, overlap)
    for value, window in zip(calls, windows):
        blender.add(value, window)
    return blender.result()


def balanced_side(size: int, limit: int, overlap: int) -> int:
    """The tile side, on the 16-px grid and at most ``limit``, that covers ``size`` px with the fewest tiles
    overlapping by ``overlap``, spread evenly: n = ceil((size - overlap) / (limit - overlap)) tiles of about
    (size - overlap) / n + overlap px. Tiles of the limit with the last one flush with the edge would make
    that last tile overlap its neighbour by up to a whole tile (at 1920 px: 768-px tiles over 2304 px of
    work); even ones keep the work near size + (n - 1) * overlap."""
    if size <= limit:
        return size
    n = -(-(size - overlap) // (limit - overlap))
    side = -(-(size - overlap) // n) + overlap
    return min(limit, -(-side // GRID) * GRID)


def grid_windows(h: int, w: int, size: tuple[int, int], overlap: int, factor: int) -> list[Window]:
    """Windows (y, x, h, w) of at most ``size`` pixels over an h x w extent in units of 1/``factor``
    pixels (1: pixels, 8: latents), overlapping by ``overlap`` pixels, starts on the 16-px grid."""
    th, tw = size[0] // factor, size[1] // factor
    step, ov = GRID // factor, overlap // factor
    return [(y, x, min(th, h), min(tw, w))
            for y in window_starts(h, th, ov, step) for x in window_starts(w, tw, ov, step)]


def fidelity_halo(config) -> int:
    """Rows of context (pixels) a strip of the fidelity decoder needs on each side: ``receptive_halo`` of its
    config (``model.fidelity``) rounded up to the 16-px grid, so strips and their context start on it. Export
    writes it to the bundle's manifest (graph ``fidelity``, ``halo``), where hosts read it."""
    from latentfuse.model.fidelity import receptive_halo

    return -(-int(receptive_halo(config)) // GRID) * GRID


def fidelity_strips(height: int, rows: int, halo: int) -> list[tuple[int, int, int, int]]:
    """Strips of an image ``height`` px tall for the fidelity decoder, at most ``rows`` rows each, spread
    evenly on the 16-px grid: (y0, y1, c0, c1) = the strip's own rows [y0, y1) and the rows [c0, c1) the
    call reads (``halo`` more on each side, within the image, and at least :data:`MIN_SIDE` rows)."""
    if rows < GRID or rows % GRID or halo < 0 or halo % GRID or height % GRID:
        raise LatentfuseError(f"fidelity strips need rows and a halo on the {GRID}-px grid, got {rows} rows, "
                              f"halo {halo}, image height {height}")
    if rows >= height:
        return [(0, height, 0, height)]
    n = -(-height // rows)
    step = -(-(-(-height // n)) // GRID) * GRID
    out = []
    for y0 in range(0, height, step):
        y1 = min(height, y0 + step)
        c0, c1 = max(0, y0 - halo), min(height, y1 + halo)
        if c1 - c0 < min(height, MIN_SIDE):  # the graphs' smallest side: more context, same rows
            c0 = max(0, c1 - MIN_SIDE)
            c1 = min(height, c0 + MIN_SIDE)
        out.append((y0, y1, c0, c1))
    return out


def _grid_size(size: tuple[int, int] | None, what: str) -> tuple[int, int] | None:
    if size is None:
        return None
    h, w = (int(v) // GRID * GRID for v in size)
    if min(h, w) < 2 * GRID:
        raise LatentfuseError(f"{what} needs at least {2 * GRID} px per side, got {size[1]}x{size[0]} (W x H)")
    return h, w


def _clamp_overlap(overlap: int, size: tuple[int, int] | None, what: str) -> int:
    """``overlap`` on the grid, at most half a window (every window advances by at least half its size)."""
    if int(overlap) < GRID:
        raise LatentfuseError(f"{what} overlap must be at least {GRID} px, got {overlap}")
    limit = min(size) // 2 if size else int(overlap)
    return min(int(overlap), limit) // GRID * GRID


class TiledBackend(WrappedBackend):
    """``inner`` with DiT calls in batched windows of ``window`` (H, W) pixels, at most ``max_batch`` rows
    per call (``None``: all windows in one), VAE calls split into tiles of ``vae_tile`` pixels only
    where an image exceeds it (``None``: never), and fidelity-decoder calls in strips of at most
    ``fidelity_rows`` rows (``None``: whole images), each read with ``fidelity_halo`` rows of context on each side
    (the model's, :class:`latentfuse.runtime.model_info.ModelInfo`)."""

    def __init__(self, inner: Backend, window: tuple[int, int] | None, vae_tile: tuple[int, int] | None = None,
                 overlap: int = DIT_OVERLAP, vae_overlap: int = VAE_OVERLAP, max_batch: int | None = None,
                 fidelity_rows: int | None = None, fidelity_halo: int = 0):
        super().__init__(inner)
        if fidelity_rows is not None and (int(fidelity_rows) < GRID or int(fidelity_rows) % GRID):
            raise LatentfuseError(f"fidelity strips take a positive multiple of {GRID} rows, got {fidelity_rows}")
        self.fidelity_rows = None if fidelity_rows is None else int(fidelity_rows)
        self.fidelity_halo = int(fidelity_halo)
        self.window_size = _grid_size(window, "a DiT window")
        self.vae_tile = _grid_size(vae_tile, "a VAE tile")
        self.overlap = _clamp_overlap(overlap, self.window_size, "window")
        self.vae_overlap = _clamp_overlap(vae_overlap, self.vae_tile, "VAE tile")
        if max_batch is not None and int(max_batch) < 1:
            raise LatentfuseError(f"the DiT batch per call must be at least 1, got {max_batch}")
        self.max_batch = None if max_batch is None else int(max_batch)
        self.calls = 0  # network calls made (tests, reporting)

    # ------------------------------------------------------------------ VAE: whole, or tiles over a limit
    def vae_tile_size(self, h: int, w: int) -> tuple[int, int] | None:
        """The tile (H, W) in pixels for an h x w pixel image over the VAE limit (:func:`balanced_side` per
        axis), else None: the image goes through whole."""
        if self.vae_tile is None or (h <= self.vae_tile[0] and w <= self.vae_tile[1]):
            return None
        return (balanced_side(h, self.vae_tile[0], self.vae_overlap),
                balanced_side(w, self.vae_tile[1], self.vae_overlap))

    def _vae_tiles(self, h: int, w: int, factor: int) -> list[Window] | None:
        """Tiles (in units of 1/``factor`` px) of an image that exceeds the VAE limit, else None."""
        size = self.vae_tile_size(h * factor, w * factor)
        if size is None:
            return None
        return grid_windows(h, w, size, self.vae_overlap, factor)

    # A tiled image goes through the VAE one image per call, each tile's output blended into the result as
    # it comes: a call's memory is one tile of one image, whatever the batch or the image size.
    def encode_images(self, images: np.ndarray) -> np.ndarray:
        _, _, h, w = images.shape
        tiles = self._vae_tiles(h, w, 1)
        if tiles is None:
            self.calls += 1
            return self.inner.encode_images(images)
        return self._vae_over_tiles(self.inner.encode_images, images, tiles, lambda v: v // LATENT_FACTOR,
                                    self.vae_overlap // LATENT_FACTOR)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        _, _, h, w = latents.shape
        tiles = self._vae_tiles(h, w, LATENT_FACTOR)
        if tiles is None:
            self.calls += 1
            return self.inner.decode(latents)
        return self._vae_over_tiles(self.inner.decode, latents, tiles, lambda v: v * LATENT_FACTOR, self.vae_overlap)

    def _vae_over_tiles(self, call: Callable[[np.ndarray], np.ndarray], x: np.ndarray, tiles: list[Window],
                        to_out: Callable[[int], int], out_overlap: int) -> np.ndarray:
        """``call`` (the VAE encoder or decoder) on every tile of every image of ``x``, one per call, each
        output blended in as it comes; ``to_out`` maps a coordinate of ``x`` to one of the output."""
        b, _, h, w = x.shape
        blender = None
        for last, (y, x0, th, tw), row in self._tile_calls(tiles, b):
            self.calls += 1
            with self._release_if(last):
                out = call(np.ascontiguousarray(x[row:row + 1, :, y:y + th, x0:x0 + tw]))
            if blender is None:
                blender = Blender((b, out.shape[1], to_out(h), to_out(w)), out_overlap)
            blender.add(out, (to_out(y), to_out(x0), to_out(th), to_out(tw)), slice(row, row + 1))
        return blender.result()

    @staticmethod
    def _tile_calls(tiles: list[Window], rows: int):
        """(last call?, tile, batch row) of every VAE call over ``tiles``, one image per call."""
        calls = [(tile, row) for tile in tiles for row in range(rows)]
        return [(i == len(calls) - 1, tile, row) for i, (tile, row) in enumerate(calls)]

    @contextlib.contextmanager
    def _release_if(self, last: bool):
        """With ``low_memory`` (the pipeline's plan for a tiled pair) the inner backend hands its memory back
        after a VAE stage's last tile only (``last``; never after a DiT call): equal tiles reuse one tile's
        arena, so releasing it after every call only costs time (a 4000x3000 pair: 92.7 s so)."""
        low = self.inner.low_memory
        self.inner.low_memory = low and last
        try:
            yield
        finally:
            self.inner.low_memory = low

    # ------------------------------------------------------------------ DiT: batched latent windows
    def dit_windows(self, h: int, w: int) -> list[Window]:
        """The latent windows of an h x w latent (one window, the whole latent, when it fits)."""
        if self.window_size is None:
            return [(0, 0, h, w)]
        return grid_windows(h, w, self.window_size, self.overlap, LATENT_FACTOR)

    def _dit(self, fn: Callable[..., np.ndarray], spatial: dict[str, np.ndarray], shared: dict[str, np.ndarray]
             ) -> np.ndarray:
        """Run ``fn(**spatial_windows, **shared_rows)`` on every window, batched, and blend the outputs.

        ``spatial`` arrays [B, C, h, w] are cut into windows stacked window-major along the batch;
        ``shared`` arrays (prompt embeddings, mask, t) have B rows and are repeated once per window."""
        ref = next(iter(spatial.values()))
        rows, _, h, w = ref.shape
        windows = self.dit_windows(h, w)
        if len(windows) == 1 and windows[0] == (0, 0, h, w):
            self.calls += 1
            with self._release_if(False):  # the DiT's memory is a chunk of small windows: keep it
                return fn(**spatial, **shared)
        # every window has the same size (grid_windows), so a chunk of them is one batched call; each chunk's
        # outputs are blended in place, so what is held is one chunk, not every window's output
        per_call = len(windows) if self.max_batch is None else max(1, self.max_batch // rows)
        blender = Blender(ref.shape[:2] + (h, w), self.overlap // LATENT_FACTOR)
        for start in range(0, len(windows), per_call):
            chunk = windows[start:start + per_call]
            feeds = {k: np.concatenate([v[:, :, y:y + wh, x:x + ww] for y, x, wh, ww in chunk])
                     for k, v in spatial.items()}
            feeds.update({k: None if v is None else np.concatenate([v] * len(chunk)) for k, v in shared.items()})
            self.calls += 1
            with self._release_if(False):
                out = fn(**feeds)
            for i, window in enumerate(chunk):
                blender.add(out[i * rows:(i + 1) * rows], window)
        return blender.result()

    def velocity(self, z_t, t, z_a, z_b, embeds, mask) -> np.ndarray:
        return self._dit(lambda z_t, z_a, z_b, t, embeds, mask: self.inner.velocity(z_t, t, z_a, z_b, embeds, mask),
                         {"z_t": z_t, "z_a": z_a, "z_b": z_b},
                         {"t": np.asarray(t, np.float32).reshape(-1), "embeds": embeds, "mask": mask})

    def regress(self, z_a, z_b, embeds, mask) -> np.ndarray:
        return self._dit(lambda z_a, z_b, embeds, mask: self.inner.regress(z_a, z_b, embeds, mask),
                         {"z_a": z_a, "z_b": z_b}, {"embeds": embeds, "mask": mask})

    # ------------------------------------------------------------------ fidelity decoder: strips of rows
    def fidelity(self, image, source_a, source_b, embeds, mask) -> np.ndarray:
        """The inner fidelity decoder on strips of rows with the model's halo of context (:func:`fidelity_strips`),
        each strip's own rows written into the result: equal to one whole-image call."""
        height = image.shape[-2]
        if self.fidelity_rows is None or self.fidelity_rows >= height:
            self.calls += 1
            return self.inner.fidelity(image, source_a, source_b, embeds, mask)
        strips = fidelity_strips(height, self.fidelity_rows, self.fidelity_halo)
        out = np.empty(image.shape, np.float32)
        for i, (y0, y1, c0, c1) in enumerate(strips):
            self.calls += 1
            with self._release_if(i == len(strips) - 1):
                part = self.inner.fidelity(*(np.ascontiguousarray(x[:, :, c0:c1]) for x in (image, source_a, source_b)),
                                           embeds, mask)
            out[:, :, y0:y1] = part[:, :, y0 - c0:y1 - c0]
        return out

    # ------------------------------------------------------------------ the rest: the inner backend's
    def max_image_size(self):
        return None  # this view takes any size

    def describe(self) -> str:
        parts = [self.inner.describe()]
        if self.window_size:
            parts.append(f"DiT in {self.window_size[1]}x{self.window_size[0]} px windows "
                         f"({self.overlap} px overlap, up to {self.max_batch or 'all'} per call)")
        if self.fidelity_rows:
            parts.append(f"fidelity decoder in strips of {self.fidelity_rows} rows")
        if self.vae_tile:
            parts.append(f"VAE tiled over {self.vae_tile[1]}x{self.vae_tile[0]} px ({self.vae_overlap} px overlap)")
        return ", ".join(parts)
