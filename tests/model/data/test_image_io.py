import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.image_io import read_image, write_image
from latentfuse.model.image_processing.color import to_gray, to_rgb


@pytest.fixture
def rgb():
    return np.random.default_rng(0).random((12, 17, 3)).astype(np.float32)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("bits,tol", [(8, 0.5 / 255 + 1e-6), (16, 0.5 / 65535 + 1e-6)])
@pytest.mark.parametrize("channels", [1, 3])
def test_round_trip(tmp_path, rgb, suffix, bits, tol, channels):
    img = rgb if channels == 3 else rgb[..., 0]
    path = write_image(tmp_path / f"x{suffix}", img, bit_depth=bits)
    back = read_image(path)
    assert back.dtype == np.float32 and back.shape == img.shape
    assert np.abs(back - img).max() <= tol


def test_jpeg_and_alpha(tmp_path, rgb):
    write_image(tmp_path / "x.jpg", rgb)
    assert read_image(tmp_path / "x.jpg").shape == rgb.shape
    rgba = np.concatenate([(rgb * 255).astype(np.uint8), np.full(rgb.shape[:2] + (1,), 7, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    back = read_image(tmp_path / "a.png")
    assert back.shape == rgb.shape
    assert np.abs(back - rgb).max() < 1 / 255


def _png16_rgb_with_filters(data: np.ndarray) -> bytes:
    """Reference encoder cycling the five PNG row filters, to check the 16-bit RGB decoder."""
    h, w, _ = data.shape
    raw = data.astype(">u2").view(np.uint8).reshape(h, w * 6).astype(np.int32)
    bpp, out, prev = 6, [], np.zeros(w * 6, np.int32)
    for y in range(h):
        kind, line = y % 5, raw[y]
        left = np.concatenate([np.zeros(bpp, np.int32), line[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        if kind == 0:
            pred = np.zeros_like(line)
        elif kind == 1:
            pred = left
        elif kind == 2:
            pred = prev
        elif kind == 3:
            pred = (left + prev) >> 1
        else:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        out.append(bytes([kind]) + ((line - pred) & 0xFF).astype(np.uint8).tobytes())
        prev = line

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(out)))
            + chunk(b"IEND", b""))


def test_16bit_rgb_png_keeps_16_bits_with_every_row_filter(tmp_path):
    data = np.random.default_rng(1).integers(0, 65536, (10, 9, 3)).astype(np.uint16)
    (tmp_path / "f.png").write_bytes(_png16_rgb_with_filters(data))
    back = read_image(tmp_path / "f.png")
    np.testing.assert_array_equal(np.round(back.astype(np.float64) * 65535).astype(np.uint16), data)


@pytest.mark.parametrize("channels,colour_type", [(1, 0), (3, 2)])
def test_16bit_png_round_trip_is_exact_and_standard(tmp_path, channels, colour_type):
    shape = (33, 47) if channels == 1 else (33, 47, 3)
    data = np.random.default_rng(2).integers(0, 65536, shape).astype(np.uint16)
    path = write_image(tmp_path / "x.png", data.astype(np.float64) / 65535, bit_depth=16)
    head = path.read_bytes()[:26]
    assert head[24] == 16 and head[25] == colour_type  # IHDR: 16 bits, gray / RGB
    back = read_image(path)
    np.testing.assert_array_equal(np.round(back.astype(np.float64) * 65535).astype(np.uint16), data)
    if channels == 1:  # another decoder agrees (Pillow reads 16-bit gray PNG only)
        with Image.open(path) as img:
            np.testing.assert_array_equal(np.asarray(img).astype(np.uint16), data)


@pytest.mark.parametrize("channels", [2, 4])
def test_16bit_png_with_alpha_drops_alpha(tmp_path, channels):
    import imagecodecs

    data = np.random.default_rng(3).integers(0, 65536, (9, 11, channels)).astype(np.uint16)
    (tmp_path / "a.png").write_bytes(imagecodecs.png_encode(data))
    back = read_image(tmp_path / "a.png")
    colour = data[..., 0] if channels == 2 else data[..., :3]
    np.testing.assert_array_equal(np.round(back.astype(np.float64) * 65535).astype(np.uint16), colour)


def test_missing_and_corrupt_files_name_the_path(tmp_path):
    with pytest.raises(LatentfuseError, match="not found.*nope.png"):
        read_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(LatentfuseError, match="bad.png"):
        read_image(bad)


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(LatentfuseError, match="bit_depth"):
        write_image(tmp_path / "x.png", np.zeros((4, 4)), bit_depth=12)
    with pytest.raises(LatentfuseError, match="NaN"):
        write_image(tmp_path / "x.png", np.full((4, 4), np.nan))
    with pytest.raises(LatentfuseError, match="shape"):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 2)))
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_gray_rgb_helpers(rgb):
    g = to_gray(rgb)
    assert g.shape == rgb.shape[:2]
    np.testing.assert_allclose(g, rgb @ np.array([0.299, 0.587, 0.114]), atol=1e-6)
    assert to_rgb(g).shape == rgb.shape and np.all(to_rgb(g)[..., 0] == g)
    assert to_gray(g) is not None and to_rgb(rgb).shape == rgb.shape
