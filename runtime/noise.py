"""Cross-language Gaussian noise: Philox4x32-10 + Box–Muller, fully specified for a C++ re-implementation.

Every host (Python with ONNX Runtime / TensorRT / PyTorch, the C++ host) draws the sampler's noise
from this one generator, so a seed gives the same fused image everywhere. The C++ port must follow
this specification exactly; ``tests/vectors/philox.json`` holds the vectors it is tested against.

Specification
-------------
1. Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel Random Numbers: As Easy as 1, 2, 3", SC11;
   Random123 ``philox.h``). State: counter c = (c0, c1, c2, c3), key k = (k0, k1), all uint32.
   One round, with M0 = 0xD2511F53, M1 = 0xCD9E8D57 and 64-bit products::

       p0 = M0 * c0            (uint64)      hi0 = p0 >> 32, lo0 = p0 & 0xFFFFFFFF
       p1 = M1 * c2            (uint64)      hi1 = p1 >> 32, lo1 = p1 & 0xFFFFFFFF
       c  = (hi1 ^ c1 ^ k0,  lo1,  hi0 ^ c3 ^ k1,  lo0)

   Ten rounds; between consecutive rounds (9 times, not after the last) the key is bumped:
   k0 += 0x9E3779B9, k1 += 0xBB67AE85 (mod 2^32). Output: the four words of c after round 10.
   Checked against Random123's ``kat_vectors`` (e.g. c = k = 0 -> 6627e8d5 e169c58d bc57ac4c 9b00dbd8).

2. Keying and counter layout for ``(seed, stream)``; seed and stream are unsigned 64-bit integers::

       k = (seed & 0xFFFFFFFF, seed >> 32)
       c = (i & 0xFFFFFFFF, i >> 32, stream & 0xFFFFFFFF, stream >> 32)     for block i = 0, 1, 2, ...

   Block i yields four words x[4i+0 .. 4i+3] in output order c0, c1, c2, c3. The uint32 stream of
   (seed, stream) is x[0], x[1], x[2], ...; a request for n words takes the first n (prefix-stable:
   a longer request starts with the shorter one).

3. uint32 -> uniform, in float64, exact (no rounding happens): u = (x + 0.5) * 2^-32.
   So u lies in [2^-33, 1 - 2^-33], strictly inside (0, 1): log(u) is always finite.

4. Box–Muller on consecutive pairs, in float64, then rounded to float32 (round-to-nearest-even)::

       r = sqrt(-2 * log(u[2j]))        theta = (2 * pi) * u[2j + 1]      (2*pi = 6.283185307179586)
       z[2j] = r * cos(theta)           z[2j + 1] = r * sin(theta)

   i.e. block i gives z[4i] = r0 cos θ0, z[4i+1] = r0 sin θ0 (from x[4i], x[4i+1]) and
   z[4i+2] = r1 cos θ1, z[4i+3] = r1 sin θ1 (from x[4i+2], x[4i+3]).

5. A requested ``shape`` is filled in C order (row-major, last axis fastest) from z[0], z[1], ...;
   n = prod(shape) values use ceil(n / 4) blocks and the tail of the last block is dropped.
   So noise for a batch [B, C, H, W] puts item b at z[b·CHW : (b+1)·CHW], and item 0 of a batch
   equals the batch-1 draw.

Streams: the sampler uses stream 0 for the initial latent Z0 and stream k + 1 for the SDE noise of
step k (0-based), so each step's noise is independent of how many steps drew noise before it.

Exactness: the uint32 words and the uniforms are bit-exact across languages. log/sin/cos are not
correctly rounded in every libm, so float64 results can differ by an ulp between numpy and a C++
libm; after the float32 cast that very rarely (~1e-8 per value) moves a value by one float32 ulp.
C++ tests compare gaussians with a tolerance of one float32 ulp, words and uniforms exactly.
"""

from __future__ import annotations

import json
import math
import operator
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from latentfuse.model.errors import LatentfuseError

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10

_MASK32 = 0xFFFFFFFF
_U64_MAX = (1 << 64) - 1
TWO_PI = 2.0 * math.pi  # 6.283185307179586, exact doubling of the float64 pi

VECTORS_PATH = Path(__file__).resolve().parents[1] / "tests" / "vectors" / "philox.json"


def philox4x32(counters: np.ndarray, key: Sequence[int], rounds: int = PHILOX_ROUNDS) -> np.ndarray:
    """Philox4x32-``rounds`` of each row of ``counters`` ([N, 4] uint32) under ``key`` (k0, k1).

    Vectorised over N with uint64 products (a 32x32-bit product fits in 64 bits). Returns [N, 4] uint32.
    """
    counters = np.asarray(counters)
    if counters.ndim != 2 or counters.shape[1] != 4:
        raise LatentfuseError(f"Philox counters must have shape [N, 4], got {counters.shape}")
    if counters.dtype != np.uint32:
        raise LatentfuseError(f"Philox counters must be uint32, got {counters.dtype}")
    if len(key) != 2 or not all(0 <= int(k) <= _MASK32 for k in key):
        raise LatentfuseError(f"Philox key must be two uint32 words, got {tuple(key)}")
    c0, c1, c2, c3 = (counters[:, j].astype(np.uint64) for j in range(4))
    k0, k1 = int(key[0]), int(key[1])
    m0, m1, mask = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1), np.uint64(_MASK32)
    shift = np.uint64(32)
    for r in range(int(rounds)):
        if r:
            k0 = (k0 + PHILOX_W0) & _MASK32
            k1 = (k1 + PHILOX_W1) & _MASK32
        p0 = m0 * c0
        p1 = m1 * c2
        c0, c1, c2, c3 = (
            (p1 >> shift) ^ c1 ^ np.uint64(k0),
            p1 & mask,
            (p0 >> shift) ^ c3 ^ np.uint64(k1),
            p0 & mask,
        )
    return np.stack([c0, c1, c2, c3], axis=1).astype(np.uint32)


def _check_u64(value: Any, what: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise LatentfuseError(f"{what} must be an integer in [0, 2^64), got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise LatentfuseError(f"{what} must be an integer in [0, 2^64), got {value!r}") from None
    if not 0 <= value <= _U64_MAX:
        raise LatentfuseError(f"{what} must be in [0, 2^64), got {value}")
    return value


def _check_shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise LatentfuseError(f"noise shape must be a tuple of integers, got {shape!r}") from None
    if any(d < 0 for d in dims):
        raise LatentfuseError(f"noise shape must be non-negative, got {dims}")
    return dims


def random_uint32(seed: int, n: int, stream: int = 0) -> np.ndarray:
    """The first ``n`` words of the (seed, stream) uint32 stream (layout in the module docstring)."""
    seed = _check_u64(seed, "seed")
    stream = _check_u64(stream, "stream")
    (n,) = _check_shape((n,))
    blocks = -(-n // 4)
    index = np.arange(blocks, dtype=np.uint64)
    counters = np.empty((blocks, 4), dtype=np.uint32)
    counters[:, 0] = (index & np.uint64(_MASK32)).astype(np.uint32)
    counters[:, 1] = (index >> np.uint64(32)).astype(np.uint32)
    counters[:, 2] = stream & _MASK32
    counters[:, 3] = stream >> 32
    words = philox4x32(counters, (seed & _MASK32, seed >> 32))
    return words.reshape(-1)[:n]


def uint32_to_uniform(x: np.ndarray) -> np.ndarray:
    """u = (x + 0.5)·2^-32 in float64: exact, strictly inside (0, 1)."""
    return (np.asarray(x, dtype=np.uint32).astype(np.float64) + 0.5) * 2.0**-32


def uniform(seed: int, shape: int | Sequence[int], stream: int = 0) -> np.ndarray:
    """float64 uniforms in (0, 1) from the (seed, stream) words, C order."""
    dims = _check_shape(shape)
    return uint32_to_uniform(random_uint32(seed, math.prod(dims), stream)).reshape(dims)


def gaussian(seed: int, shape: int | Sequence[int], stream: int = 0) -> np.ndarray:
    """float32 N(0, 1) samples of ``shape`` for (seed, stream): Philox4x32-10 + Box–Muller, C order."""
    dims = _check_shape(shape)
    n = math.prod(dims)
    u = uint32_to_uniform(random_uint32(seed, 2 * -(-n // 2), stream)).reshape(-1, 2)
    radius = np.sqrt(-2.0 * np.log(u[:, 0]))
    theta = TWO_PI * u[:, 1]
    z = np.empty((u.shape[0], 2), dtype=np.float64)
    z[:, 0] = radius * np.cos(theta)
    z[:, 1] = radius * np.sin(theta)
    return z.reshape(-1)[:n].astype(np.float32).reshape(dims)


def gaussian_like(seed: int, tensor: Any, stream: int = 0) -> Any:
    """``gaussian(seed, tensor.shape, stream)`` as a torch tensor with ``tensor``'s dtype and device.

    The noise is always drawn on the host with the generator above, so every backend (and the C++
    host) sees the same numbers; only the final copy goes to the device.
    """
    import torch

    values = torch.from_numpy(gaussian(seed, tuple(tensor.shape), stream))
    return values.to(device=tensor.device, dtype=tensor.dtype)


# ------------------------------------------------------------------------- cross-language vectors

# Random123 tests/kat_vectors, philox4x32 lines: (rounds, counter c0..c3, key k0 k1, output).
RANDOM123_KAT: tuple[tuple[int, tuple[int, ...], tuple[int, int], tuple[int, ...]], ...] = (
    (7, (0x00000000,) * 4, (0x00000000,) * 2, (0x5F6FB709, 0x0D893F64, 0x4F121F81, 0x4F730A48)),
    (7, (0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x5207DDC2, 0x45165E59, 0x4D8EE751, 0x8C52F662)),
    (7, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A)),
    (10, (0x00000000,) * 4, (0x00000000,) * 2, (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (10, (0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (10, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
)

# Our derived cases: high key word (seed >= 2^32), high stream word, shapes that are not multiples of 4.
_DERIVED_CASES: tuple[tuple[int, int, tuple[int, ...]], ...] = (
    (0, 0, (8,)),
    (0, 1, (7,)),
    (1, 0, (2, 3, 5)),
    (42, 0, (1, 4, 2, 2)),
    (42, 6, (3, 3)),
    (2**32 + 7, 3, (5,)),
    (2**64 - 1, 2**32 + 1, (2, 2)),
)


def _hex(words: Sequence[int]) -> list[str]:
    return [f"{int(w):08x}" for w in words]


def reference_vectors() -> dict:
    """The Random123 KAT vectors and our derived (seed, stream, shape) vectors, as JSON-ready data."""
    derived = []
    for seed, stream, shape in _DERIVED_CASES:
        n = math.prod(shape)
        z = gaussian(seed, shape, stream)
        derived.append({
            "seed": str(seed),
            "stream": str(stream),
            "shape": list(shape),
            "uint32": _hex(random_uint32(seed, 2 * -(-n // 2), stream)),
            "uniform": [float(u) for u in uniform(seed, (n,), stream)],
            "gaussian": [float(v) for v in z.reshape(-1)],
            "gaussian_bits": _hex(z.reshape(-1).view(np.uint32)),
        })
    return {
        "generator": "philox4x32-10 + Box-Muller; specification in runtime/noise.py",
        "notes": (
            "seed and stream are decimal strings (64-bit values do not fit a JSON double). "
            "uint32 words and uniforms must match exactly; gaussian values to one float32 ulp. "
            "uint32 lists every word the gaussians consume (n rounded up to even)."
        ),
        "kat_source": "Random123 tests/kat_vectors (D. E. Shaw Research), philox4x32 lines",
        "kat": [
            {"rounds": r, "counter": _hex(c), "key": _hex(k), "output": _hex(o)}
            for r, c, k, o in RANDOM123_KAT
        ],
        "derived": derived,
    }


def write_vectors(path: str | Path = VECTORS_PATH) -> Path:
    """Regenerate ``tests/vectors/philox.json`` (only needed if the specification changes)."""
    from latentfuse.model.atomic import atomic_file

    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(_dumps(reference_vectors()) + "\n")
    return path


def _dumps(obj: Any, indent: str = "") -> str:
    """JSON with one object key per line and lists of numbers/strings kept on one line."""
    inner = indent + "  "
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k)}: {_dumps(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(inner + _dumps(v, inner) for v in obj) + "\n" + indent + "]"
    return json.dumps(obj)


if __name__ == "__main__":
    print(write_vectors())
