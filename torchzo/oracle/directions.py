"""Query directions regenerated from per-query seeds.

A list of parameter tensors is treated as one flat vector per device. The direction of one query
is drawn from a generator seeded with that query's seed, split back into the tensors' shapes, so
a direction never has to be stored: anyone holding the seed (a later pass, a batched evaluator,
another rank) can rebuild it bit for bit. The same seed over a single flat tensor gives the same
numbers as over the list of tensors it concatenates. The kinds of direction (:data:`KINDS`):

- ``"gaussian"`` (the default): ``randn(numel)``;
- ``"rademacher"``: independent signs, +1 or -1 with probability 1/2 each (SPSA's classic
  choice), from packed random bits: ``ceil(numel / 64)`` 64-bit words, word ``i`` being
  SplitMix64's output ``mix64(mix64(s) + (i + 1) * 0x9E3779B97F4A7C15)`` (mod 2**64) for the
  block's seed ``s``, whose bytes (in the machine's byte order) give 8 entries each, bit
  ``j`` of byte ``i`` being entry ``8 i + j`` (set: -1, clear: +1). A counter-based
  generator, so that the compiled kernels of :mod:`torchzo.oracle.kernels` and torch's
  integer ops (on any device) compute the same words; with the kernels, the oracle perturbs
  and accumulates from the packed bits (:class:`Signs`).

- ``"orthogonal"``: the Gaussian draws of a step's directions, orthogonalised in groups of
  at most ``numel`` (a Haar-random orthonormal frame, QR with the signs of ``R``'s diagonal
  made positive) and scaled to norm ``sqrt(numel)``. With ``q`` comparable to ``d`` the
  estimate's variance is lower than with independent directions (Choromanski et al., 2018,
  "Structured evolution with compact architectures"); the price is that a direction depends
  on its whole group, so a step holds its group's directions (``min(q, numel)`` of them) at
  once. A layout over several devices orthogonalises each device's piece, in groups of the
  smallest piece's size, so that the whole directions of a group are orthogonal too.
- ``"auto"``: ``"orthogonal"`` where a step's ``q`` directions are many for the dimension
  they live in (``numel < 16 q``), ``"gaussian"`` (the same bits) where they are not. At
  ``numel >= 16 q`` independent Gaussian draws are nearly orthogonal already: orthogonalising
  would cut the forward estimate's error by ``(q + 1) / (d + 1)``, at most 6.5% at q = 20,
  while it costs a step its group's ``q x numel`` floats and their orthogonalisation (at
  d = 1e6 more than a Gaussian ZO-SGD step's whole overhead: ``docs/benchmarks/overhead.md``).

All have zero mean and unit variance per coordinate (``E[u u^T] = I``), so the estimator's
scaling is the same for each; a Rademacher or orthogonal direction's norm is exactly
``sqrt(numel)``. The oracle asks for a step's directions with :meth:`Layout.direction` and
:meth:`Layout.rows`, which know the step's seeds; :meth:`Layout.sample` and
:meth:`Layout.sample_rows` draw directions that depend on their own seed alone.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import kernels

if TYPE_CHECKING:
    from .closure import Scratch

__all__ = ["INDEPENDENT_KINDS", "KINDS", "Direction", "Guide", "Layout", "Signs", "check_kind",
           "default_mu", "draw_seeds", "generation_dtype"]

#: The kinds of query direction: standard Gaussian, independent random signs, a step's
#: Gaussian draws orthogonalised, or orthogonalised only where that pays.
KINDS = ("gaussian", "rademacher", "orthogonal", "auto")
#: The kinds whose directions each depend on their own seed alone.
INDEPENDENT_KINDS = ("gaussian", "rademacher")

# Decorrelates the streams of two device blocks that share a query seed.
_BLOCK_STRIDE = 0x9E3779B97F4A7C15
_SEED_MAX = 2**63 - 1
# Stands in a list of a layout's tensors until each block's are in: a query's direction builds
# one such list, and a new empty tensor for it would cost as much as the rest of its Python.
_UNSET = torch.empty(0)
# Separates the stream of a guided direction's subspace coefficients from its own seed's.
_GUIDE_SALT = 0x5DEECE66D


def default_mu(dtype: torch.dtype) -> float:
    """The smallest power of ten not below ``sqrt(eps)`` of ``dtype``.

    ``sqrt(eps)`` balances truncation and rounding error of a forward difference on a function of
    unit scale. float32 gives 1e-3, float64 1e-7, bfloat16 and float16 1e-1.
    """
    eps = torch.finfo(dtype).eps
    return 10.0 ** math.ceil(math.log10(math.sqrt(eps)) - 1e-12)


def generation_dtype(dtypes: Sequence[torch.dtype]) -> torch.dtype:
    """Directions and estimates are kept in float64 if any tensor is float64, else float32."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def check_kind(kind: object, name: str = "kind") -> str:
    """``kind`` if it is one of :data:`KINDS`, else a ``ValueError`` naming ``name``."""
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"{name} must be one of {KINDS}, got {kind!r}")
    return kind


@functools.cache
def _sign_table(dtype: torch.dtype, device: torch.device) -> Tensor:
    """Row ``b``: the 8 signs byte ``b`` stands for (cached per dtype and device). Looking a
    byte's 8 entries up at once costs a tenth of shifting and masking them one bit at a time."""
    bits = torch.arange(256).unsqueeze(1).bitwise_right_shift(torch.arange(8)).bitwise_and(1)
    return (1.0 - 2.0 * bits).to(dtype=dtype, device=device)


def _draw_signs(n: int, device: torch.device, seed: int) -> Tensor:
    """The packed signs of seed ``seed``'s Rademacher direction of ``n`` entries: the bytes of
    ``ceil(n / 64)`` SplitMix64 words (see the module docstring), in the machine's order."""
    words = torch.empty(-(-n // 64), dtype=torch.int64, device=device)
    key = _mix64(seed % 2**64)
    if device.type == "cpu" and kernels.available():
        kernels.sign_words(words, key)
    elif words.numel():
        # The same words in int64 ops, which wrap as uint64 arithmetic does.
        state = torch.arange(1, words.numel() + 1, dtype=torch.int64, device=device)
        state.mul_(_signed(_GOLDEN)).add_(_signed(key))
        words.copy_(_mix64_tensor(state))
    return words.view(torch.uint8)


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


def draw_seeds(generator: torch.Generator, n: int) -> list[int]:
    """``n`` query seeds from ``generator`` (which advances exactly once per call)."""
    if n == 0:
        return []
    draws = torch.randint(0, _SEED_MAX, (n,), generator=generator, dtype=torch.int64,
                          device=generator.device)
    return [int(s) for s in draws.tolist()]


@dataclass(frozen=True)
class Guide:
    """Guided ES directions (Maheswaranathan et al., 2019) around a few guiding vectors.

    ``u = sqrt(alpha) z + sqrt(1 - alpha) Q z_k``, rescaled to the norm of ``z``, where ``z`` is
    the layout's direction (Gaussian or Rademacher), ``Q`` an orthonormal basis (``basis``: k
    vectors, each a list of tensors shaped like the layout) and ``z_k ~ N(0, I_k)`` is drawn
    from the query's seed (Gaussian whatever the layout's kind).
    """

    basis: list[list[Tensor]]
    alpha: float = 0.5

    @staticmethod
    def orthonormal(vectors: Sequence[Sequence[Tensor]], alpha: float = 0.5) -> Guide:
        """A Guide over the span of ``vectors`` (Gram-Schmidt; negligible ones are dropped)."""
        basis: list[list[Tensor]] = []
        for v in vectors:
            w = [t.detach().to(torch.float64).reshape(-1) for t in v]
            for q in basis:
                proj = sum(float((a * b).sum()) for a, b in zip(w, q))
                w = [a - proj * b for a, b in zip(w, q)]
            norm = math.sqrt(sum(float((a * a).sum()) for a in w))
            scale = math.sqrt(sum(float((t.double() ** 2).sum()) for t in v))
            if norm > 1e-6 * max(scale, 1e-30):
                basis.append([a / norm for a in w])
        return Guide(basis, alpha)

    def flat(self) -> Guide:
        """The same guide over the concatenation of the layout's tensors."""
        return Guide([[torch.cat([t.reshape(-1) for t in q])] for q in self.basis], self.alpha)

    def apply(self, u: list[Tensor], seed: int) -> None:
        """Turn the direction ``u`` (flat or shaped pieces) into the guided direction, in place."""
        zk = torch.randn(len(self.basis), dtype=torch.float64,
                         generator=torch.Generator().manual_seed(seed ^ _GUIDE_SALT))
        # The rescaling is a constant to autograd (GuidedES is an ablation, never meta-trained).
        z_norm = math.sqrt(sum(float((t.detach().double() ** 2).sum()) for t in u))
        for t in u:
            t.mul_(math.sqrt(self.alpha))
        for coeff, q in zip(zk.tolist(), self.basis):
            for t, piece in zip(u, q):
                t.add_(piece.view(t.shape).to(t.dtype), alpha=math.sqrt(1 - self.alpha) * coeff)
        u_norm = math.sqrt(sum(float((t.detach().double() ** 2).sum()) for t in u))
        for t in u:
            t.mul_(z_norm / u_norm)


class _Block:
    """The tensors of a layout that live on one device."""

    def __init__(self, device: torch.device, index: list[int], numels: list[int],
                 dtype: torch.dtype, position: int) -> None:
        self.device = device
        self.index = index
        self.numels = numels
        self.dtype = dtype
        self.position = position
        self.numel = sum(numels)
        self.generator = torch.Generator(device=device)

    def seed_for(self, seed: int) -> int:
        return (seed + self.position * _BLOCK_STRIDE) % _SEED_MAX


def _draw_seeded(b: _Block, out: Tensor, seed: int, kind: str) -> None:
    """Fill ``out`` with block ``b``'s direction of ``seed`` (of an independent ``kind``)."""
    if kind == "gaussian":
        # randn's bits: normal_ fills as randn(out=) does, without its Python (a batched step
        # at small d draws q rows of a few hundred entries, where the calls are the cost).
        b.generator.manual_seed(b.seed_for(seed))
        out.normal_(generator=b.generator)
    else:
        _unpack(_block_signs(b, seed), 0, out)


def _block_signs(b: _Block, seed: int) -> Tensor:
    """Block ``b``'s packed Rademacher signs for ``seed``."""
    return _draw_signs(b.numel, b.device, b.seed_for(seed))


def _draw_rows(b: _Block, seeds: Sequence[int], kind: str) -> Tensor:
    """Block ``b``'s directions of ``seeds`` (of an independent ``kind``), as rows."""
    out = torch.empty(len(seeds), b.numel, dtype=b.dtype, device=b.device)
    for row, seed in zip(out.unbind(0), seeds):
        _draw_seeded(b, row, seed, kind)
    return out


#: Coordinates per direction of a group from which it counts as tall: orthogonalised by
#: Cholesky QR, not Householder, or (kind ``"auto"``) not at all.
_TALL = 16


def _orthonormal_rows(Z: Tensor) -> Tensor:
    """The rows of the Gaussian ``Z`` (m x n) orthonormalised in order (in place where it
    can): Gram-Schmidt's result, ``Z = L Q`` with ``L`` lower triangular of positive
    diagonal, so that ``Q`` is Haar-distributed (not biased by a factorisation's sign
    convention)."""
    m, n = Z.shape
    if n >= _TALL * m:
        # A tall Gaussian block is near-orthogonal already (condition ~ 1 + 2 sqrt(m / n)),
        # where Cholesky QR twice is as accurate as Householder and runs as BLAS-3 on Z's own
        # memory: an order of magnitude faster at n = 1e6, where Householder's panel is
        # memory-bound. Each pass keeps Gram-Schmidt's result, so the fallback may start
        # from either.
        for _ in range(2):
            L, info = torch.linalg.cholesky_ex(Z @ Z.T)
            if info.item():
                break
            # Z <- L^-1 Z, solved as Z^T L^-T on the column-major view Z^T.
            if Z.device.type == "cpu":
                torch.linalg.solve_triangular(L.T, Z.T, upper=True, left=False, out=Z.T)
            else:
                Z = torch.linalg.solve_triangular(L.T, Z.T, upper=True, left=False).T
        else:
            return Z.contiguous()  # rows are viewed as directions
    Q, R = torch.linalg.qr(Z.T)
    signs = torch.where(torch.diagonal(R) < 0, -1.0, 1.0).to(Q.dtype)
    return (Q * signs).T.contiguous()


class Signs:
    """A Rademacher direction held as its packed signs, one byte tensor per device block.

    What :meth:`Layout.direction` gives where the compiled kernels run
    (:mod:`torchzo.oracle.kernels`): the oracle perturbs with :meth:`perturb` and accumulates
    with :meth:`accumulate`, never unpacking the d signs into floats. The bits are those of
    the same direction drawn as tensors and used by torch ops.
    """

    def __init__(self, blocks: Sequence[_Block], bits: list[Tensor]) -> None:
        self._blocks = list(blocks)
        self.bits = bits

    def perturb(self, outs: Sequence[Tensor], bases: Sequence[Tensor], alpha: float) -> None:
        """``outs[i] = bases[i] + alpha * u[i]`` for each of the layout's tensors ``i``."""
        for b, bits in zip(self._blocks, self.bits):
            offset = 0
            for i, n in zip(b.index, b.numels):
                if kernels.fits(outs[i], b.dtype) and kernels.fits(bases[i], b.dtype):
                    kernels.sign_query(n, offset, out=outs[i], base=bases[i], bits=bits,
                                       alpha=alpha)
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
                    kernels.sign_query(n, offset, g=g[i].view(-1), terms=bits, coeffs=coeffs,
                                       init=init and start == 0)
                    offset += n


#: A query direction as the oracle holds it: tensors shaped like the layout's, or packed signs.
Direction = list[Tensor] | Signs


class Layout:
    """How a list of tensors is seen as one flat vector for sampling directions.

    ``sample(seed)`` returns one direction as a list of tensors shaped like the originals (views
    into a per-device scratch buffer that the next ``sample`` call overwrites). ``kind``: the
    directions' distribution, one of :data:`KINDS`.
    """

    def __init__(self, tensors: Sequence[Tensor], kind: str = "gaussian") -> None:
        self.kind = check_kind(kind)
        self.shapes = [t.shape for t in tensors]
        self.dtypes = [t.dtype for t in tensors]
        by_device: dict[torch.device, list[int]] = {}
        for i, t in enumerate(tensors):
            by_device.setdefault(t.device, []).append(i)
        self.blocks = [
            _Block(dev, idx, [tensors[i].numel() for i in idx],
                   generation_dtype([tensors[i].dtype for i in idx]), pos)
            for pos, (dev, idx) in enumerate(by_device.items())
        ]
        self._on_cpu = all(b.device.type == "cpu" for b in self.blocks)
        self._scratch: list[tuple[Tensor, list[Tensor]] | None] = [None] * len(self.blocks)
        self._frames: list[tuple[tuple[int, ...], Tensor] | None] = [None] * len(self.blocks)

    @property
    def numel(self) -> int:
        return sum(b.numel for b in self.blocks)

    def dtype_of(self, i: int) -> torch.dtype:
        """Dtype in which tensor ``i``'s direction and estimate are held."""
        for b in self.blocks:
            if i in b.index:
                return b.dtype
        raise IndexError(i)

    def _views(self, k: int) -> tuple[Tensor, list[Tensor]]:
        """Block ``k``'s scratch buffer and its views shaped like the block's tensors."""
        cached = self._scratch[k]
        if cached is None:
            b = self.blocks[k]
            buf = torch.empty(b.numel, dtype=b.dtype, device=b.device)
            cached = self._scratch[k] = (
                buf, [v.view(self.shapes[i]) for v, i in zip(buf.split(b.numels), b.index)])
        return cached

    @property
    def group_size(self) -> int:
        """How many of a step's directions an orthogonal kind orthogonalises together."""
        return max(1, min(b.numel for b in self.blocks)) if self.blocks else 1

    def _independent(self, what: str) -> None:
        if self.kind not in INDEPENDENT_KINDS:
            raise ValueError(f"{what} draws directions from their own seeds, which a "
                             f"{self.kind!r} direction is not: use direction() or rows(), "
                             f"which take the step's seeds")

    def _frame(self, k: int, seeds: Sequence[int], group: int) -> Tensor:
        """Device block ``k``'s rows for group ``group`` of the step's ``seeds``: their
        Gaussian draws orthogonalised and scaled to norm ``sqrt(numel)``. The last group is
        cached (a pure function of its seeds), so a step draws each group once."""
        b = self.blocks[k]
        m = self.group_size
        chunk = tuple(seeds[group * m:(group + 1) * m])
        cached = self._frames[k]
        if cached is not None and cached[0] == chunk:
            return cached[1]
        Z = _draw_rows(b, chunk, "gaussian")
        if b.numel:
            Z = _orthonormal_rows(Z).mul_(math.sqrt(b.numel))
        self._frames[k] = (chunk, Z)
        return Z

    def _scaled(self, b: _Block, views: list[Tensor], scale: Sequence[Tensor] | None
                ) -> list[Tensor]:
        if scale is None:
            return views
        factors = [scale[i].to(b.dtype) for i in b.index]
        if torch.is_grad_enabled() and any(f.requires_grad for f in factors):
            # Autograd cannot scale the split views in place, and must keep its own copy
            # of z: the next call overwrites the scratch buffer.
            return [v.clone() * f for v, f in zip(views, factors)]
        torch._foreach_mul_(views, factors)
        return views

    def _shaped(self, fill: Callable[[int, _Block, Tensor], None], guide_seed: int,
                scale: Sequence[Tensor] | None, guide: Guide | None) -> list[Tensor]:
        out: list[Tensor] = [_UNSET] * len(self.shapes)
        for k, b in enumerate(self.blocks):
            buf, views = self._views(k)
            fill(k, b, buf)
            for v, i in zip(self._scaled(b, views, scale), b.index):
                out[i] = v
        if guide is not None and guide.basis:
            guide.apply(out, guide_seed)
        return out

    def sample(self, seed: int, scale: Sequence[Tensor] | None = None,
               guide: Guide | None = None) -> list[Tensor]:
        """The direction for ``seed``: ``z`` (of the layout's kind), ``scale * z``, or ``z`` guided
        into a subspace. Independent kinds only (:data:`INDEPENDENT_KINDS`)."""
        self._independent("sample")

        def fill(k: int, b: _Block, buf: Tensor) -> None:
            _draw_seeded(b, buf, seed, self.kind)
        return self._shaped(fill, seed, scale, guide)

    def _framed(self, b: _Block, seeds: Sequence[int]) -> bool:
        """Whether block ``b``'s directions of the step are orthogonal frames' rows
        (always for ``"orthogonal"``; for ``"auto"`` unless the step's directions are few for
        the block's size), not independent Gaussian draws."""
        if self.kind == "orthogonal":
            return True
        # Judged on the step's q, not the group's length, so that a step is orthogonalised
        # as a whole or not at all (a short last group would otherwise be left out).
        return b.numel < _TALL * len(seeds)

    def packed(self, scale: Sequence[Tensor] | None = None, guide: Guide | None = None) -> bool:
        """Whether :meth:`direction` gives :class:`Signs`: plain Rademacher directions on CPU
        blocks, with the compiled kernels available."""
        return (self.kind == "rademacher" and scale is None and (guide is None or not guide.basis)
                and self._on_cpu and kernels.available())

    def direction(self, seeds: Sequence[int], k: int, scale: Sequence[Tensor] | None = None,
                  guide: Guide | None = None) -> Direction:
        """Direction ``k`` of the step whose directions have ``seeds``, as :meth:`sample`
        gives it (views into the scratch buffer, or into a cached frame: read them, do not
        write them), or as :class:`Signs` (plain Rademacher directions where the kernels run);
        any kind."""
        if self.kind in INDEPENDENT_KINDS:
            if self.packed(scale, guide):
                return Signs(self.blocks, [_block_signs(b, seeds[k]) for b in self.blocks])
            return self.sample(seeds[k], scale, guide)
        m = self.group_size
        group = k // m
        framed = [self._framed(b, seeds) for b in self.blocks]
        if all(framed) and scale is None and (guide is None or not guide.basis):
            # Nothing to write: the frame's row itself, read-only, saves a pass over d.
            out: list[Tensor] = [_UNSET] * len(self.shapes)
            for j, b in enumerate(self.blocks):
                row = self._frame(j, seeds, group)[k % m]
                for v, i in zip(row.split(b.numels), b.index):
                    out[i] = v.view(self.shapes[i])
            return out

        def fill(j: int, b: _Block, buf: Tensor) -> None:
            if framed[j]:
                buf.copy_(self._frame(j, seeds, group)[k % m])
            else:
                _draw_seeded(b, buf, seeds[k], "gaussian")
        return self._shaped(fill, seeds[k], scale, guide)

    def _rows_tail(self, U: Tensor, seeds: Sequence[int], scale: Tensor | None,
                   guide: Guide | None) -> Tensor:
        if scale is not None:
            factor = scale.to(U.dtype)
            U = U * factor if torch.is_grad_enabled() and factor.requires_grad else U.mul_(factor)
        if guide is not None and guide.basis:
            for k, seed in enumerate(seeds):
                guide.apply([U[k]], seed)
        return U

    def _flat_block(self, what: str) -> _Block:
        if len(self.shapes) != 1 or len(self.shapes[0]) != 1:
            raise ValueError(f"{what} needs a layout of one flat tensor")
        return self.blocks[0]

    def sample_rows(self, seeds: Sequence[int], scale: Tensor | None = None,
                    guide: Guide | None = None) -> Tensor:
        """The directions of ``seeds`` as the rows of one new ``(len(seeds), numel)`` tensor.

        For a layout of one flat tensor (``scale`` and ``guide`` are over it too); row ``k`` has
        the bits of ``sample(seeds[k])``. Drawn straight into the rows: at small ``numel`` the
        per-direction cost is Python, not arithmetic. Independent kinds only.
        """
        b = self._flat_block("sample_rows")
        self._independent("sample_rows")
        return self._rows_tail(_draw_rows(b, seeds, self.kind), seeds, scale, guide)

    def rows(self, seeds: Sequence[int], start: int, n: int, scale: Tensor | None = None,
             guide: Guide | None = None) -> Tensor:
        """Directions ``start`` to ``start + n`` of the step whose directions have ``seeds``,
        as the rows of a new tensor (one flat tensor's layout); any kind. Row ``k`` has the
        bits of ``direction(seeds, start + k)``, whatever the split of the step into calls."""
        if self.kind in INDEPENDENT_KINDS:
            return self.sample_rows(seeds[start:start + n], scale, guide)
        b = self._flat_block("rows")
        m = self.group_size
        pieces, j = [torch.empty(0, b.numel, dtype=b.dtype, device=b.device)], start
        while j < start + n:
            group = j // m
            stop = min(start + n, (group + 1) * m)
            pieces.append(self._frame(0, seeds, group)[j - group * m:stop - group * m]
                          if self._framed(b, seeds)
                          else _draw_rows(b, seeds[j:stop], "gaussian"))
            j = stop
        U = torch.cat(pieces)  # a new tensor: the cached frame stays as drawn
        return self._rows_tail(U, seeds[start:start + n], scale, guide)

    def zeros(self, scratch: Scratch | None = None) -> list[Tensor]:
        """A zero buffer shaped like the layout, in the generation dtype (its memory from
        ``scratch`` where that has some)."""
        out = self.empty(scratch)
        if out:
            torch._foreach_zero_(out)
        return out

    def empty(self, scratch: Scratch | None = None) -> list[Tensor]:
        """An uninitialised buffer shaped like the layout, in the generation dtype (its memory
        from ``scratch`` where that has some)."""
        out: list[Tensor] = [_UNSET] * len(self.shapes)
        for b in self.blocks:
            for i in b.index:
                out[i] = (torch.empty(self.shapes[i], dtype=b.dtype, device=b.device)
                          if scratch is None else
                          scratch.empty(self.shapes[i], dtype=b.dtype, device=b.device))
        return out
