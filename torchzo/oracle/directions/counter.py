"""A counter-based Gaussian stream: entry ``i`` of a direction is a function of (key, i) alone.

What makes a Gaussian direction regenerable piece by piece (a tensor, a chunk of a tensor, in
any order and on any device) with the same bits as drawn whole, so that a step can perturb
parameters in place and update them from seeds, never holding a direction (see
:mod:`torchzo.oracle.seeded`). torch's generators cannot start in the middle of a stream.

Normals come in pairs by Box-Muller. Pair ``j`` takes two 32-bit hashes of its counter (two
multiply-xorshift rounds, keyed per direction), ``u = ((w1 >> 8) + 1) / 2**24`` in (0, 1]
and the radius ``sqrt(-2 ln u)`` from a float32 polynomial of the logarithm's mantissa, the
angle from ``w2`` as a quadrant and ``y`` in [-pi/4, pi/4] through sine and cosine
polynomials. A block of 32 entries holds 16 pairs: entries ``32 b + l`` the cosines and
``32 b + 16 + l`` the sines (``l < 16``, pair ``16 b + l``). Only IEEE float32 multiply, add,
subtract and square root, each rounded once (no fused multiply-add), so that torch ops here
and the compiled kernel give the same bits. Relative error of the logarithm 4.6e-7; the tails
end at ``sqrt(2 ln 2**24)`` = 5.77 (checked moments: ``research/gaussian_generator.py``).
"""
from __future__ import annotations

import struct

import torch
from torch import Tensor

from .. import kernels

__all__ = ["GAUSSIAN_STREAM", "gaussian_range"]

#: The version of the Gaussian stream, which optimizers' state dicts record (1: torch's
#: generator, which drew them before).
GAUSSIAN_STREAM = 2

_MASK32 = 0xFFFFFFFF
_M1, _M2 = 0x7FEB352D, 0x846CA68B
# Highest degree first: the logarithm's (times -2), the sine's and the cosine's.
_LOG = (-1.003461704e-01, 1.633564681e-01, -1.732599586e-01, 1.988827735e-01,
        -2.496146560e-01, 3.333526254e-01, -5.000058413e-01)
_SIN = (-1.949563593e-04, 8.331978694e-03, -1.666665077e-01)
_COS = (-1.365244971e-03, 4.166127741e-02)
_LN2 = 0.6931472
_ANGLE = 3.6572863e-10  # (pi / 4) / 2**31
_LOG_OFFSET = 0x3F3504F3  # float32 bits of sqrt(1/2): the mantissa is taken in [sqrt(1/2), sqrt(2))


def _f32(x: float) -> float:
    """``x`` rounded to float32 (as a C float literal is)."""
    return struct.unpack("f", struct.pack("f", x))[0]


def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def keys(key: int, high: int) -> tuple[int, int, int, int]:
    """The four 32-bit keys of the pairs ``high * 2**32`` to ``(high + 1) * 2**32`` of the
    direction of ``key`` (a uint64)."""
    a = _mix64((key ^ (high << 32) ^ 0x243F6A8885A308D3) & 0xFFFFFFFFFFFFFFFF)
    b = _mix64(a ^ 0x13198A2E03707344)
    return a & _MASK32, a >> 32, b & _MASK32, b >> 32


def _hash(x: Tensor, add: int, xor: int) -> Tensor:
    """A keyed 32-bit multiply-xorshift hash, on values below 2**32 held in int64."""
    x = (x + add) & _MASK32
    x = x ^ (x >> 16)
    x = (x * _M1) & _MASK32
    x = x ^ xor
    x = x ^ (x >> 15)
    x = (x * _M2) & _MASK32
    return x ^ (x >> 16)


def _const(x: float, like: Tensor) -> Tensor:
    return torch.tensor(_f32(x), dtype=torch.float32, device=like.device)


def _horner(coeffs: tuple[float, ...], x: Tensor, scale: float = 1.0) -> Tensor:
    p = _const(scale * coeffs[0], x).expand_as(x)
    for c in coeffs[1:]:
        p = p * x + _const(scale * c, x)
    return p


def _as_int32(t: Tensor) -> Tensor:
    """The low 32 bits of int64 ``t`` as a signed int32 (two's complement)."""
    return (t - ((t & 0x80000000) << 1)).to(torch.int32)


def _pairs(w1: Tensor, w2: Tensor) -> tuple[Tensor, Tensor]:
    """Each pair's two normals (the cosine's, the sine's) from its hashes (int64 below 2**32)."""
    # Radius: -2 ln u from u's exponent and a polynomial of its mantissa.
    ki = ((w1 >> 8) + 1).to(torch.float32)
    v = ki.view(torch.int32) - (_LOG_OFFSET + (24 << 23))
    e = (v >> 23).to(torch.float32)
    f = ((v & 0x7FFFFF) + _LOG_OFFSET).view(torch.float32) - 1.0
    p = _horner(_LOG, f, -2.0) * f + _const(-2.0, f)
    # In float64, then rounded: torch's float32 sqrt on the CPU is not always correctly rounded
    # (one ulp off), and a float's square root taken in double precision then rounded is.
    r = torch.sqrt((e * _const(-2.0 * _LN2, e) + f * p).double()).float()
    # Angle: a quadrant (bits 31, 30) and y in [-pi/4, pi/4] (the other 30 bits).
    y = _as_int32((w2 << 2) & _MASK32).to(torch.float32) * _const(_ANGLE, r)
    y2 = y * y
    s = y + (y * y2) * _horner(_SIN, y2)
    c = (1.0 - _const(0.5, y) * y2) + (y2 * y2) * _horner(_COS, y2)
    odd = (w2 >> 30) & 1 == 1
    sign = _as_int32(w2 & 0x80000000)
    a0 = torch.where(odd, -s, c).view(torch.int32) ^ sign
    a1 = torch.where(odd, c, s).view(torch.int32) ^ sign
    return r * a0.view(torch.float32), r * a1.view(torch.float32)


def gaussian_range(key: int, start: int, out: Tensor) -> None:
    """Entries ``start`` to ``start + out.numel()`` of the direction of ``key`` (a uint64)
    into the flat ``out`` (any float dtype and device; drawn in float32, then cast). The
    compiled kernel draws them where it runs (the same bits)."""
    n = out.numel()
    if n == 0:
        return
    if out.is_cpu and kernels.available():
        if kernels.fits(out, torch.float32):
            kernels.gauss_fill(out, start, key)
        else:
            drawn = torch.empty(n, dtype=torch.float32)
            kernels.gauss_fill(drawn, start, key)
            out.view(-1).copy_(drawn)
        return
    _torch_range(key, start, out)


def _torch_range(key: int, start: int, out: Tensor) -> None:
    """:func:`gaussian_range` in torch ops."""
    n = out.numel()
    first, last = start // 32, (start + n - 1) // 32
    blocks = torch.arange(first, last + 1, dtype=torch.int64, device=out.device)
    j = (blocks * 16).unsqueeze(1) + torch.arange(16, device=out.device)  # (blocks, 16) pairs
    values = torch.empty(j.shape[0], 2, 16, dtype=torch.float32, device=out.device)
    highs = range((16 * first) >> 32, ((16 * last + 15) >> 32) + 1)
    for high in highs:  # one set of keys per 2**32 pairs (2**33 entries)
        ka1, kb1, ka2, kb2 = keys(key % 2**64, high)
        rows = ((j[:, 0] >> 32) == high).nonzero().squeeze(1) if len(highs) > 1 else None
        low = (j if rows is None else j[rows]) & _MASK32
        cos, sin = _pairs(_hash(low, ka1, kb1), _hash(low, ka2, kb2))
        if rows is None:
            values[:, 0], values[:, 1] = cos, sin
        else:
            values[rows, 0], values[rows, 1] = cos, sin
    skip = start - 32 * first
    out.view(-1).copy_(values.view(-1)[skip:skip + n])
