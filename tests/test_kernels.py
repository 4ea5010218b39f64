"""The compiled Rademacher kernels give the bits of the torch ops they replace, or stay out.

Every comparison runs the same computation with the kernels and under ``kernels.disabled()``
(torch ops alone) and asks for identical bits: the kernels may change a step's time, never its
result. Where no C compiler is present the kernel half of these tests cannot run, and they say
so (a skip with the reason); CI's machine has one.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from zo_testing import FAST, all_same_bits, snapshot

import torchzo
from torchzo.optim._guard import all_finite, max_abs
from torchzo.oracle import Layout, kernels
from torchzo.oracle.directions import Signs, _draw_signs, _unpack

needs_kernels = pytest.mark.skipif(not kernels.available(),
                                   reason=f"kernels unavailable: {kernels.reason()}")
CPU = torch.device("cpu")
FLOATS = [torch.float32, torch.float64]


def unpacked(bits: torch.Tensor, offset: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    u = torch.empty(n, dtype=dtype)
    _unpack(bits, offset, u)
    return u


# -- the kernels themselves -----------------------------------------------------------------------


@needs_kernels
@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 1000, 4099])
def test_sign_words_match_the_torch_integer_ops(n):
    for seed in (0, 1, 12345, 2**62 + 3, 2**63 - 1):
        fast = _draw_signs(n, CPU, seed).clone()
        with kernels.disabled():
            slow = _draw_signs(n, CPU, seed)
        assert torch.equal(fast, slow)


@needs_kernels
@FAST
@given(n=st.integers(0, 3000), offset=st.integers(0, 70), dtype=st.sampled_from(FLOATS),
       alpha=st.floats(-10, 10, allow_subnormal=False), seed=st.integers(0, 2**63 - 1))
def test_perturbation_is_torch_add_bit_for_bit(n, offset, dtype, alpha, seed):
    bits = _draw_signs(offset + n, CPU, seed)
    base = torch.randn(n, dtype=dtype, generator=torch.Generator().manual_seed(seed % 2**32))
    out = torch.full((n,), float("nan"), dtype=dtype)
    kernels.sign_query(n, offset, out=out, base=base, bits=bits, alpha=alpha)
    expected = torch.add(base, unpacked(bits, offset, n, dtype), alpha=alpha)
    assert all_same_bits([out], [expected])


@needs_kernels
@FAST
@given(n=st.integers(0, 3000), offset=st.integers(0, 70), dtype=st.sampled_from(FLOATS),
       coeffs=st.lists(st.floats(-1e3, 1e3, allow_subnormal=False), max_size=kernels.GROUP),
       init=st.booleans(), seed=st.integers(0, 2**32))
def test_accumulation_is_one_add_per_term_in_order(n, offset, dtype, coeffs, init, seed):
    terms = [_draw_signs(offset + n, CPU, seed + k) for k in range(len(coeffs))]
    start = torch.randn(n, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    g = torch.full((n,), float("nan"), dtype=dtype) if init else start.clone()
    kernels.sign_query(n, offset, g=g, terms=terms, coeffs=coeffs, init=init)
    expected = torch.zeros(n, dtype=dtype) if init else start.clone()
    for bits, c in zip(terms, coeffs):
        expected.add_(unpacked(bits, offset, n, dtype), alpha=c)
    assert all_same_bits([g], [expected])


SPECIAL = [0.0, -0.0, float("inf"), -float("inf"), float("nan"), -float("nan"), 1e-310, -1e-40,
           3.4e38, -1.7e308, 1.0]


def _reference_abs_max(t: torch.Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def _same_abs_max(t: torch.Tensor) -> bool:
    got, want = kernels.abs_max(t), _reference_abs_max(t)
    return (math.isnan(got) and math.isnan(want)) or (got == want and not math.isnan(got))


@needs_kernels
@FAST
@given(n=st.integers(0, 3000), dtype=st.sampled_from(FLOATS), seed=st.integers(0, 2**32),
       specials=st.lists(st.tuples(st.integers(0, 2999), st.sampled_from(SPECIAL)), max_size=4),
       scale=st.sampled_from([1.0, 1e-300, 1e30]))
def test_abs_max_is_torch_abs_max_with_nan_inf_zeros_and_subnormals(n, dtype, seed, specials,
                                                                    scale):
    t = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    t = (t * scale).to(dtype)  # 1e-300 leaves float32 all (signed) zeros, float64 subnormals
    for i, v in specials:
        if i < n:
            t[i] = torch.tensor(v, dtype=torch.float64).to(dtype)  # -1.7e308: -inf in float32
    assert _same_abs_max(t), (kernels.abs_max(t), _reference_abs_max(t))


def _same_as_torch_ops(n: int, offset: int, dtype: torch.dtype, m: int, seed: int) -> bool:
    """One perturbation and one accumulation of ``m`` terms, kernels against torch ops."""
    bits = [_draw_signs(offset + n, CPU, seed + k) for k in range(m + 1)]
    base = torch.randn(n, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    out, g = torch.empty(n, dtype=dtype), base.clone()
    coeffs = [0.5 + k for k in range(m)]
    kernels.sign_query(n, offset, out=out, base=base, bits=bits[m], alpha=0.25, g=g,
                       terms=bits[:m], coeffs=coeffs)
    expected = base.clone()
    for b, c in zip(bits, coeffs):
        expected.add_(unpacked(b, offset, n, dtype), alpha=c)
    perturbed = torch.add(base, unpacked(bits[m], offset, n, dtype), alpha=0.25)
    return all_same_bits([out, g], [perturbed, expected])


@needs_kernels
@pytest.mark.parametrize("isa", ["portable", "avx2"])
def test_every_build_this_cpu_runs_gives_the_same_bits(isa, monkeypatch, tmp_path):
    # The default build is what the other tests check; signs.c has a path per instruction set
    # (AVX-512 masks, sign tables in AVX2 or plain vectors), so build the others too.
    full = kernels._flags()
    if isa == "avx2" and "-mavx2" not in full:
        pytest.skip("this CPU has no AVX2")
    keep = (lambda f: not f.startswith("-mavx512")) if isa == "avx2" else (
        lambda f: not f.startswith("-m"))
    monkeypatch.setattr(kernels, "_flags", lambda: [f for f in full if keep(f)])
    monkeypatch.setenv("TORCHZO_CACHE", str(tmp_path))
    kernels._load.cache_clear()
    try:
        assert kernels.available(), kernels.reason()
        assert list((tmp_path / "kernels").glob("signs-*.so"))  # this build, not the default
        for n in (1, 7, 64, 511, 513, 1000, 4099):
            for offset in (0, 3, 8, 13):
                for dtype in FLOATS:
                    for m in range(kernels.GROUP + 1):
                        assert _same_as_torch_ops(n, offset, dtype, m, seed=n + offset + m), \
                            (n, offset, dtype, m)
        for dtype in FLOATS:
            t = torch.randn(4099, dtype=dtype, generator=torch.Generator().manual_seed(0))
            for i, v in enumerate(SPECIAL):  # each in turn the largest, at a vector's lane
                t[517 + 37 * i] = torch.tensor(v, dtype=torch.float64).to(dtype)
                assert _same_abs_max(t), (dtype, v)
    finally:
        kernels._load.cache_clear()


@needs_kernels
def test_a_zero_term_leaves_positive_zeros_as_zero_plus_torch_would():
    # 0.0 + (-0.0) is +0.0: starting from "init" must not start from the first term itself.
    bits = torch.full((128,), 255, dtype=torch.uint8)  # every sign -1
    g = torch.empty(1000)
    kernels.sign_query(1000, 0, g=g, terms=[bits], coeffs=[0.0], init=True)
    assert not torch.signbit(g).any()


@needs_kernels
def test_the_kernels_refuse_what_they_cannot_write_safely():
    bits = torch.zeros(16, dtype=torch.uint8)
    good = torch.zeros(100)
    with pytest.raises(ValueError, match="contiguous CPU"):
        kernels.sign_query(100, 0, out=torch.zeros(200)[::2], base=good, bits=bits, alpha=1.0)
    with pytest.raises(ValueError, match="one dtype"):
        kernels.sign_query(100, 0, out=good, base=good.double(), bits=bits, alpha=1.0)
    with pytest.raises(ValueError, match="n elements"):
        kernels.sign_query(99, 0, g=good, terms=[bits], coeffs=[1.0])
    with pytest.raises(ValueError, match="at least 13 bytes"):
        kernels.sign_query(100, 0, g=good, terms=[bits[:12]], coeffs=[1.0])
    with pytest.raises(ValueError, match="terms"):
        kernels.sign_query(100, 0, g=good, terms=[bits] * (kernels.GROUP + 1),
                           coeffs=[1.0] * (kernels.GROUP + 1))
    with pytest.raises(ValueError, match="together"):
        kernels.sign_query(100, 0, out=good, bits=bits)
    with pytest.raises(ValueError, match="int64"):
        kernels.sign_words(torch.zeros(4, dtype=torch.int32), 1)
    for bad in (torch.zeros(200)[::2], torch.zeros(4, dtype=torch.float16)):
        with pytest.raises(ValueError, match="abs_max needs"):
            kernels.abs_max(bad)


@needs_kernels
def test_a_perturbation_advances_the_version_counter_as_an_in_place_op_does():
    p = torch.zeros(100)
    before = p._version
    Signs([Layout([p], "rademacher").blocks[0]], [torch.zeros(16, dtype=torch.uint8)]) \
        .perturb([p], [torch.ones(100)], 0.5)
    assert p._version > before and torch.equal(p, torch.full((100,), 1.5))


# -- the oracle and the optimizers: the same bits with and without them ----------------------------


def steps(cls, shapes, dtype=torch.float32, estimator="forward", n=3, noncontiguous=False,
          kernels_on=True, **kw):
    torch.manual_seed(0)
    params = [torch.randn(s, dtype=dtype) for s in shapes]
    if noncontiguous:
        params[0] = params[0].t()  # a transposed view: perturbed by torch ops, the rest not
    params = [torch.nn.Parameter(p) for p in params]
    targets = [torch.randn(p.shape, dtype=p.dtype) for p in params]
    opt = cls(params, q=kw.pop("q", 10), directions_kind="rademacher", estimator=estimator,
              **kw)

    def closure():
        return sum(((p.double() - t.double()) ** 2).sum() for p, t in zip(params, targets))

    losses = []
    if kernels_on:
        for _ in range(n):
            losses.append(opt.step(closure))
    else:
        with kernels.disabled():
            for _ in range(n):
                losses.append(opt.step(closure))
    return snapshot(params), [float(v) for v in losses], opt.state_dict()


RAGGED = [(37, 13), (13,), (5, 1001), (3,), ()]


@needs_kernels
@pytest.mark.parametrize("cls", [torchzo.ZOSGD, torchzo.ZOSignSGD, torchzo.ZOAdam])
@pytest.mark.parametrize("estimator", ["forward", "central", "antithetic"])
def test_optimizer_steps_are_the_same_bits_with_and_without_the_kernels(cls, estimator):
    fast = steps(cls, RAGGED, estimator=estimator)
    slow = steps(cls, RAGGED, estimator=estimator, kernels_on=False)
    assert all_same_bits(fast[0], slow[0]) and fast[1] == slow[1]


@needs_kernels
@pytest.mark.parametrize("case", [dict(dtype=torch.float64), dict(noncontiguous=True),
                                  dict(dtype=torch.bfloat16), dict(q=25)],
                         ids=["float64", "non-contiguous", "bfloat16", "more-than-a-group"])
def test_the_kernels_stand_aside_where_they_cannot_write_and_the_bits_hold(case):
    fast = steps(torchzo.ZOSGD, [(40, 30), (7,)], **case)
    slow = steps(torchzo.ZOSGD, [(40, 30), (7,)], kernels_on=False, **case)
    assert all_same_bits(fast[0], slow[0]) and fast[1] == slow[1]


@needs_kernels
def test_rademacher_directions_come_packed_only_where_the_kernels_run():
    layout = Layout([torch.zeros(10)], "rademacher")
    assert isinstance(layout.direction([1, 2], 0), Signs)
    with kernels.disabled():
        assert not layout.packed()
        assert isinstance(layout.direction([1, 2], 0), list)
    scale = [torch.ones(10)]
    assert isinstance(layout.direction([1, 2], 0, scale), list)  # scaled: floats needed
    assert not Layout([torch.zeros(10)], "gaussian").packed()


@needs_kernels
@FAST
@given(tensors=st.lists(st.tuples(st.integers(0, 300), st.sampled_from([*FLOATS, torch.float16]),
                                  st.booleans(), st.lists(st.sampled_from(SPECIAL), max_size=2)),
                        max_size=4),
       seed=st.integers(0, 2**32))
def test_the_step_guard_checks_agree_with_and_without_the_kernels(tensors, seed):
    # max_abs and all_finite take the kernel for contiguous CPU float32/float64 and torch ops
    # for the rest (a strided view, float16): any mix must give the answer of either alone.
    gen, ts = torch.Generator().manual_seed(seed), []
    for n, dtype, strided, specials in tensors:
        t = torch.randn(2 * n, generator=gen).to(dtype)
        t[:len(specials)] = torch.tensor(specials[:2 * n], dtype=torch.float64).to(dtype)
        ts.append(t[::2] if strided else t[:n])
    finite = all(bool(torch.isfinite(t).all()) for t in ts)
    largest = max([float(t.double().abs().max()) for t in ts if t.numel()] or [0.0],
                  key=lambda v: (math.isnan(v), v))
    with kernels.disabled():
        slow = max_abs(ts), all_finite(ts)
    fast = max_abs(ts), all_finite(ts)
    for got in (fast, slow):
        assert got[1] is finite
        assert (math.isnan(got[0]) and math.isnan(largest)) or got[0] == largest, (got, largest)


# -- without a compiler, or told not to ----------------------------------------------------------


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})


PROBE = """
    import torch, torchzo
    from torchzo.oracle import kernels
    print(kernels.available(), "|", kernels.reason())
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(300))
    opt = torchzo.ZOSGD([p], q=9, directions_kind="rademacher")
    for _ in range(3):
        opt.step(lambda: (p ** 2).sum())
    print(p.double().sum().item().hex())
"""


@pytest.mark.slow
def test_without_the_kernels_the_oracle_runs_on_torch_ops_and_says_why(tmp_path):
    off = run_python(PROBE, TORCHZO_KERNELS="0")
    assert off.returncode == 0, off.stderr
    assert off.stdout.splitlines()[0] == "False | disabled by TORCHZO_KERNELS=0"
    nocc = run_python(PROBE, CC=str(tmp_path / "no-such-cc"), TORCHZO_CACHE=str(tmp_path))
    assert nocc.returncode == 0, nocc.stderr
    assert nocc.stdout.splitlines()[0].startswith("False | no C compiler")
    assert off.stdout.splitlines()[1] == nocc.stdout.splitlines()[1]
    if kernels.available():  # the same trajectory where they run
        on = run_python(PROBE, TORCHZO_CACHE=str(tmp_path))
        assert on.returncode == 0, on.stderr
        assert on.stdout.splitlines()[0] == "True | None"
        assert on.stdout.splitlines()[1] == off.stdout.splitlines()[1]
        assert list((tmp_path / "kernels").glob("signs-*.so"))  # built into the given cache


@pytest.mark.slow
def test_a_compiler_that_fails_leaves_the_kernels_off_with_its_message(tmp_path):
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\necho 'fake compiler: no' >&2\nexit 1\n")
    fake.chmod(0o755)
    out = run_python(PROBE, CC=str(fake), TORCHZO_CACHE=str(tmp_path / "cache"))
    assert out.returncode == 0, out.stderr
    assert "could not build the kernels" in out.stdout and "fake compiler: no" in out.stdout


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sign_words_on_cuda_are_the_cpu_kernels_words():
    cuda = torch.device("cuda")
    for n in (1, 64, 1000, 100_003):
        assert torch.equal(_draw_signs(n, cuda, 77).cpu(), _draw_signs(n, CPU, 77))
    layout = Layout([torch.zeros(500, device=cuda), torch.zeros(3, 7, device=cuda)],
                    "rademacher")
    assert not layout.packed()  # CUDA blocks: float directions, the same signs
    (u, v) = layout.sample(5)
    cpu = Layout([torch.zeros(500), torch.zeros(3, 7)], "rademacher").sample(5)
    assert torch.equal(u.cpu(), cpu[0]) and torch.equal(v.cpu(), cpu[1])
