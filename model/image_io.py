"""Image reading and writing shared by the data pipeline, the metrics CLI and the runtime.

Arrays are float32 in [0, 1], shaped HxW (gray) or HxWx3 (RGB). PNG / JPEG / BMP go through Pillow,
TIFF through tifffile (it handles 16-bit and float TIFFs that Pillow does not). Alpha channels are
dropped. Writes are atomic (:func:`model.atomic.atomic_file`), at 8 or 16 bits per sample.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from model.atomic import atomic_file
from model.errors import LatentfuseError

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
        elif _png_is_16bit_color(path):
            raw = _read_png16_color(path)  # Pillow would truncate 16-bit RGB(A) PNGs to 8 bits
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
            if data.dtype == np.uint16:
                if data.ndim == 3:  # Pillow writes 16-bit PNGs in gray only
                    _write_png16_rgb(tmp, data)
                    return path
                img = Image.fromarray(data.astype(np.uint16))  # mode I;16
            else:
                img = Image.fromarray(data)
            options = {"quality": 95} if fmt == "JPEG" else {}
            img.save(tmp, format=fmt, **options)
    return path


def _write_png16_rgb(path: Path, data: np.ndarray) -> None:
    """Write a 16-bit RGB PNG (Pillow writes only 16-bit gray) with zlib and the PNG chunk format."""
    import struct
    import zlib

    h, w, _ = data.shape
    raw = np.ascontiguousarray(data.astype(">u2")).view(np.uint8).reshape(h, w * 6)
    rows = np.concatenate([np.zeros((h, 1), np.uint8), raw], axis=1)  # filter byte 0 per row

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16-bit, colour type 2 (RGB)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
    path.write_bytes(png + chunk(b"IEND", b""))


def _png_is_16bit_color(path: Path) -> bool:
    if path.suffix.lower() != ".png":
        return False
    with open(path, "rb") as fh:
        head = fh.read(29)
    # signature (8) + IHDR length/tag (8) + width, height (8) + bit depth (1) + colour type (1)
    return len(head) >= 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16 and head[25] in (2, 6)


def _read_png16_color(path: Path) -> np.ndarray:
    """Decode a non-interlaced 16-bit RGB / RGBA PNG (PNG spec section 9: per-row filters 0-4)."""
    import struct
    import zlib

    data = path.read_bytes()
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        length, tag = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if tag == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat.append(body)
        elif tag == b"IEND":
            break
        pos += 12 + length
    if header is None or not idat:
        raise LatentfuseError(f"cannot read image {path}: PNG without IHDR or IDAT chunks")
    w, h, _, colour, _, _, interlace = header
    if interlace:
        raise LatentfuseError(f"cannot read image {path}: interlaced 16-bit colour PNG is not supported")
    bpp = 6 if colour == 2 else 8
    stride = w * bpp
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    if raw.size < h * (stride + 1):
        raise LatentfuseError(f"cannot read image {path}: truncated PNG data")
    rows = raw[: h * (stride + 1)].reshape(h, stride + 1)
    out = np.zeros((h, stride), np.int32)
    prev = np.zeros(stride, np.int32)
    for y in range(h):
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        if kind == 0:
            cur = line
        elif kind == 1:  # Sub: running sum along pixels, per byte lane
            cur = np.cumsum(line.reshape(w, bpp), axis=0).reshape(-1) & 0xFF
        elif kind == 2:  # Up
            cur = (line + prev) & 0xFF
        elif kind in (3, 4):  # Average / Paeth depend on the reconstructed left pixel: walk the row
            cur = line.copy()
            for x in range(0, stride, bpp):
                left = cur[x - bpp:x] if x else np.zeros(bpp, np.int32)
                up = prev[x:x + bpp]
                if kind == 3:
                    pred = (left + up) >> 1
                else:
                    upleft = prev[x - bpp:x] if x else np.zeros(bpp, np.int32)
                    p = left + up - upleft
                    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
                    pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
                cur[x:x + bpp] = (cur[x:x + bpp] + pred) & 0xFF
        else:
            raise LatentfuseError(f"cannot read image {path}: bad PNG filter type {kind} in row {y}")
        out[y] = cur
        prev = cur
    samples = out.astype(np.uint8).reshape(h, w * bpp // 2, 2)
    values = (samples[..., 0].astype(np.uint16) << 8) | samples[..., 1]
    return values.reshape(h, w, bpp // 2)


def to_gray(image: np.ndarray) -> np.ndarray:
    """HxWx3 -> HxW luma (ITU-R BT.601 weights, as in the fusion literature's Y channel); HxW unchanged."""
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return (arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.float32)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        return arr[..., 0]
    raise LatentfuseError(f"to_gray expects HxW or HxWx3, got shape {arr.shape}")


def to_rgb(image: np.ndarray) -> np.ndarray:
    """HxW -> HxWx3 by replication; HxWx3 unchanged."""
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return arr
    if arr.ndim == 3 and arr.shape[-1] == 1:
        return np.repeat(arr, 3, axis=-1)
    raise LatentfuseError(f"to_rgb expects HxW or HxWx3, got shape {arr.shape}")
