"""Rademacher directions: independent signs, +1 or -1 with probability 1/2 each, from packed bits.

A block's direction of seed ``s`` is ``ceil(numel / 64)`` 64-bit words, word ``i`` being
SplitMix64's output ``mix64(mix64(s) + (i + 1) * 0x9E3779B97F4A7C15)`` (mod 2**64), whose bytes
(in the machine's byte order) give 8 entries each, bit ``j`` of byte ``i`` being entry ``8 i + j``
(set: -1, clear: +1). A counter-based generator, so that the compiled kernels of
:mod:`torchzo.oracle.kernels` and torch's integer ops (on any device) compute the same words;
with the kernels, the oracle perturbs and accumulates from the packed bits (:class:`Signs`).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from .. import kernels
from .blocks import Block

__all__ = ["RADEMACHER", "Rademacher", "Signs", "signs_range"]


@functools.cache
def _sign_table(dtype: torch.dtype, device: torch.device) -> Tensor:
    """Row ``b``: the 8 signs byte ``b`` stands for (cached per dtype and device). Looking a
    byte's 8 entries up at once costs a tenth of shifting and masking them one bit at a time."""
    bits = torch.arange(256).unsqueeze(1).bitwise_right_shift(torch.arange(8)).bitwise_and(1)
    return (1.0 - 2.0 * bits).to(dtype=dtype, device=device)


def _draw_signs(n: int, device: torch.device, seed: int, first: int = 0) -> Tensor:
    """The packed signs of seed ``seed``'s Rademacher direction of ``n`` entries: the bytes of
    ``ceil(n / 64)`` SplitMix64 words (see the module docstring), in the machine's order;
    ``first``: from word ``first`` on (entry ``64 first``)."""
    words = torch.empty(-(-n // 64), dtype=torch.int64, device=device)
    key = _mix64(seed % 2**64)
    if device.type == "cpu" and kernels.available():
        kernels.sign_words(words, (key + first * _GOLDEN) % 2**64)
    elif words.numel():
        # The same words in int64 ops, which wrap as uint64 arithmetic does.
        state = torch.arange(first + 1, first + words.numel() + 1, dtype=torch.int64,
                             device=device)
        state.mul_(_signed(_GOLDEN)).add_(_signed(key))
        words.copy_(_mix64_tensor(state))
    return words.view(torch.uint8)


def signs_range(block: Block, seed: int, start: int, n: int) -> tuple[Tensor, int]:
    """Packed signs holding entries ``start`` to ``start + n`` of ``block``'s piece of the
    direction of ``seed``, and the position of entry ``start`` in them."""
    first = start // 64
    return _draw_signs(start + n - 64 * first, block.device, block.seed_for(seed), first), \
        start - 64 * first


_GOLDEN = 0x9E3779B97F4A7C15
_MIX = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
_MASK64 = 2**64 - 1


def _signed(v: int) -> int:
    return v - 2**64 if v >= 2**63 else v


def _mix64(z: int) -> int:
    """SplitMix64's output function on a Python int (Steele, Lea and Flood, 2014)."""
    z = ((z ^ (z >> 30)) * _MIX[0]) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX[1]) & _MASK64
    return z ^ (z >> 31)


def _mix64_tensor(z: Tensor) -> Tensor:
    """:func:`_mix64` over an int64 tensor (logical shifts: the arithmetic shift, masked)."""
    def shr(t: Tensor, s: int) -> Tensor:
        return t.bitwise_right_shift(s).bitwise_and_((1 << (64 - s)) - 1)
    z = (z ^ shr(z, 30)).mul_(_signed(_MIX[0]))
    z = (z ^ shr(z, 27)).mul_(_signed(_MIX[1]))
    return z ^ shr(z, 31)


def _unpack(bits: Tensor, offset: int, out: Tensor) -> None:
    """Fill the flat, contiguous ``out`` with the signs ``offset`` onwards of ``bits``."""
    n = out.numel()
    table = _sign_table(out.dtype, out.device)
    skip, first = offset % 8, offset // 8
    codes = bits[first:first - (-(skip + n) // 8)].to(torch.int32)
    if skip:  # a ragged start: whole bytes' rows, then cut
        out.copy_(table[codes].view(-1)[skip:skip + n])
        return
    whole = n // 8
    torch.index_select(table, 0, codes[:whole], out=out[:8 * whole].view(whole, 8))
    if whole * 8 < n:
        out[8 * whole:] = table[codes[whole]][:n - 8 * whole]


def _block_signs(b: Block, seed: int) -> Tensor:
    """Block ``b``'s packed signs for the direction of ``seed``."""
    return _draw_signs(b.numel, b.device, b.seed_for(seed))


class Rademacher:
    """Independent random signs (SPSA's classic choice), held packed where the kernels run."""

    independent = True
    packs = True
    seekable = True
    largest = 1.0

    def fill(self, block: Block, out: Tensor, seed: int) -> None:
        _unpack(_block_signs(block, seed), 0, out)

    def fill_range(self, block: Block, out: Tensor, seed: int, start: int) -> None:
        bits, offset = signs_range(block, seed, start, out.numel())
        _unpack(bits, offset, out)

    def framed(self, numel: int, q: int) -> bool:
        return False


RADEMACHER = Rademacher()


class Signs:
    """A Rademacher direction held as its packed signs, one byte tensor per device block.

    What :meth:`Layout.direction` gives where the compiled kernels run
    (:mod:`torchzo.oracle.kernels`): the oracle perturbs with :meth:`perturb` and accumulates
    with :meth:`accumulate`, never unpacking the d signs into floats. The bits are those of
    the same direction drawn as tensors and used by torch ops.
    """

    def __init__(self, blocks: Sequence[Block], bits: list[Tensor]) -> None:
        self._blocks = list(blocks)
        self.bits = bits

    @staticmethod
    def draw(blocks: Sequence[Block], seed: int) -> Signs:
        """The direction of ``seed`` over ``blocks``."""
        return Signs(blocks, [_block_signs(b, seed) for b in blocks])

    def perturb(self, outs: Sequence[Tensor], bases: Sequence[Tensor], alpha: float) -> None:
        """``outs[i] = bases[i] + alpha * u[i]`` for each of the layout's tensors ``i``."""
        for b, bits in zip(self._blocks, self.bits):
            offset = 0
            for i, n in zip(b.index, b.numels):
                if kernels.fits(outs[i], b.dtype) and kernels.fits(bases[i], b.dtype):
                    kernels.sign_perturb(n, offset, outs[i], bases[i], bits, alpha)
                else:  # e.g. a non-contiguous or bfloat16 parameter: torch's op, same bits
                    u = torch.empty(n, dtype=b.dtype, device=b.device)
                    _unpack(bits, offset, u)
                    with torch.no_grad():
                        torch.add(bases[i], u.view(outs[i].shape), alpha=alpha, out=outs[i])
                offset += n

    @staticmethod
    def accumulate(g: Sequence[Tensor], terms: Sequence[tuple[Signs, float]],
                   init: bool = False) -> None:
        """``g += c u`` for each ``(u, c)`` of ``terms`` in order, ``g`` shaped like the
        directions' layout in its generation dtype (contiguous); with ``init``, ``g`` starts
        from zeros (its contents unread: :meth:`Layout.empty` will do). One pass over ``g``
        per :data:`~torchzo.oracle.kernels.GROUP` terms."""
        if not terms:
            if init:
                torch._foreach_zero_(list(g))
            return
        for start in range(0, len(terms), kernels.GROUP):
            group = terms[start:start + kernels.GROUP]
            coeffs = [c for _, c in group]
            for k, b in enumerate(group[0][0]._blocks):
                bits = [u.bits[k] for u, _ in group]
                offset = 0
                for i, n in zip(b.index, b.numels):
                    kernels.sign_accumulate(n, offset, g[i].view(-1), bits, coeffs,
                                            init and start == 0)
                    offset += n
