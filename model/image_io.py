"""Image reading and writing shared by the data pipeline, the metrics CLI and the runtime.

Arrays are float32 in [0, 1], shaped HxW (gray) or HxWx3 (RGB). 8-bit PNG, JPEG and BMP go through
Pillow; 16-bit PNG (gray, gray + alpha, RGB, RGBA) through imagecodecs' libpng codec, since Pillow reads
and writes 16-bit PNG in gray only and truncates 16-bit RGB to 8 bits; TIFF through tifffile (it handles
16-bit and float TIFFs that Pillow does not). Alpha channels are dropped. Writes are atomic
(:func:`latentfuse.model.atomic.atomic_file`), at 8 or 16 bits per sample.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from latentfuse.model.atomic import atomic_file
from latentfuse.model.errors import LatentfuseError

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_TIFF = (".tif", ".tiff")


def is_image_file(path: str | os.PathLike) -> bool:
    """True when ``path`` has an image suffix this module reads."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def normalise_image(raw: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Integer / float samples -> float32 [0, 1]; drop alpha; squeeze a single channel.

    ``path`` names the source (a file, or e.g. "image A" for an in-memory array) in error messages.
    """
    arr = np.asarray(raw)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar TIFF (C, H, W)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    elif arr.ndim == 3 and arr.shape[-1] == 2:
        arr = arr[..., 0]  # gray + alpha
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise LatentfuseError(f"{path}: unsupported image shape {arr.shape} (expected HxW or HxWx3)")
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        peak = float(np.iinfo(arr.dtype).max)
        return (arr.astype(np.float64) / peak).astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        if not np.isfinite(out).all():
            raise LatentfuseError(f"{path}: float image contains NaN or Inf values")
        lo, hi = float(out.min()), float(out.max())
        if lo < -1e-3 or hi > 1.0 + 1e-3:
            raise LatentfuseError(f"{path}: float image values span [{lo:g}, {hi:g}], expected [0, 1]")
        return np.clip(out, 0.0, 1.0)
    raise LatentfuseError(f"{path}: unsupported sample type {arr.dtype}")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read PNG / JPEG / BMP / TIFF (8- or 16-bit) as float32 [0, 1], HxW or HxWx3 (alpha dropped)."""
    path = Path(path)
    if not path.is_file():
        raise LatentfuseError(f"image not found: {path}")
    try:
        if path.suffix.lower() in _TIFF:
            import tifffile

            raw = tifffile.imread(path)
        elif _png_is_16bit(path):
            import imagecodecs

            raw = imagecodecs.png_decode(path.read_bytes())  # HxW, HxWx2/3/4 uint16
        else:
            from PIL import Image

            with Image.open(path) as img:
                img.load()
                if img.mode == "P":
                    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    img = img.convert("RGB")
                elif img.mode in ("I;16", "I;16B", "I;16L"):
                    raw = np.asarray(img, dtype=np.uint16)
                    img = None
                elif img.mode == "I":  # 16-bit PNGs often decode as 32-bit ints with values < 65536
                    raw = np.asarray(img)
                    raw = raw.astype(np.uint16) if raw.max(initial=0) < 65536 else raw.astype(np.uint32)
                    img = None
                elif img.mode == "1":
                    img = img.convert("L")
                if img is not None:
                    raw = np.asarray(img)
    except LatentfuseError:
        raise
    except Exception as err:  # PIL / tifffile raise many types for corrupt files
        raise LatentfuseError(f"cannot read image {path}: {type(err).__name__}: {err}") from None
    return normalise_image(raw, path)


def _quantise(array: np.ndarray, bit_depth: int, path: Path) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise LatentfuseError(f"cannot write {path}: image shape {arr.shape} is not HxW or HxWx3")
    if bit_depth not in (8, 16):
        raise LatentfuseError(f"cannot write {path}: bit_depth must be 8 or 16, got {bit_depth}")
    if np.issubdtype(arr.dtype, np.integer):
        raise LatentfuseError(
            f"cannot write {path}: expected a float image in [0, 1], got integer dtype {arr.dtype}"
        )
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise LatentfuseError(f"cannot write {path}: image contains NaN or Inf values")
    peak = 255 if bit_depth == 8 else 65535
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return np.round(np.clip(arr, 0.0, 1.0) * peak).astype(dtype)


def write_image(path: str | os.PathLike, array: np.ndarray, bit_depth: int = 8) -> Path:
    """Write a float [0, 1] HxW / HxWx3 image atomically as PNG, JPEG (8-bit) or TIFF (8 or 16-bit)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise LatentfuseError(f"cannot write {path}: unknown image suffix (use one of {IMAGE_SUFFIXES})")
    if suffix in (".jpg", ".jpeg", ".bmp") and bit_depth != 8:
        raise LatentfuseError(f"cannot write {path}: {suffix} supports 8-bit only, got {bit_depth}")
    data = _quantise(array, bit_depth, path)
    with atomic_file(path) as tmp:
        if suffix in _TIFF:
            import tifffile

            tifffile.imwrite(tmp, data, photometric="rgb" if data.ndim == 3 else "minisblack")
        else:
            from PIL import Image

            fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}[suffix]
            if data.dtype == np.uint16:  # only .png here (8-bit-only suffixes are refused above)
                import imagecodecs

                tmp.write_bytes(imagecodecs.png_encode(np.ascontiguousarray(data)))
                return path
            img = Image.fromarray(data)
            options = {"quality": 95} if fmt == "JPEG" else {}
            img.save(tmp, format=fmt, **options)
    return path


def _png_is_16bit(path: Path) -> bool:
    if path.suffix.lower() != ".png":
        return False
    with open(path, "rb") as fh:
        head = fh.read(25)
    # signature (8) + IHDR length/tag (8) + width, height (8) + bit depth (1)
    return len(head) == 25 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16
