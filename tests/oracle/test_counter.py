"""The counter-based Gaussian stream: the same bits in torch ops and in every kernel variant, for
any piece, and numbers that behave like N(0, 1)."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchzo.oracle import kernels
from torchzo.oracle.directions import Layout, counter

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="kernels not built")


def torch_range(key, start, n, dtype=torch.float32):
    out = torch.empty(n, dtype=dtype)
    counter._torch_range(key, start, out)
    return out


def bits(t):
    return t.view(torch.int32)


def torch_rounds_once():
    """Whether torch's ``add_`` with ``alpha`` is a fused multiply-add here (CPUs with FMA)."""
    e = 2.0**-23  # (1 + e)^2 = 1 + 2e + e^2: rounded once, minus (1 + 2e) leaves e^2, else 0
    return bool(torch.tensor([-(1 + 2 * e)]).add_(torch.tensor([1 + e]), alpha=1 + e)[0] != 0)


@given(key=st.integers(0, 2**64 - 1), start=st.integers(0, 5000), n=st.integers(0, 700),
       cut=st.integers(0, 700))
@settings(max_examples=60, deadline=None)
def test_any_piece_is_the_same_slice_of_the_whole(key, start, n, cut):
    whole = torch_range(key, 0, start + n)
    assert torch.equal(bits(torch_range(key, start, n)), bits(whole[start:]))
    cut = min(cut, n)  # two pieces drawn apart are the two halves
    a, b = torch_range(key, start, cut), torch_range(key, start + cut, n - cut)
    assert torch.equal(bits(torch.cat([a, b])), bits(whole[start:]))


@needs_kernels
@pytest.mark.parametrize("start", [0, 5, 31, 32, 255, 256, 1000, 2**33 - 100])
@pytest.mark.parametrize("n", [1, 16, 33, 257, 4099])
def test_every_kernel_variant_gives_the_torch_bits(start, n):
    want = torch_range(0xDEADBEEF, start, n)
    for variant in kernels.info()["variants"]:
        with kernels._variant(variant):
            got = torch.empty(n)
            kernels.gauss_fill(got, start, 0xDEADBEEF)
        assert torch.equal(bits(got), bits(want)), variant


@needs_kernels
@pytest.mark.skipif(not torch_rounds_once(), reason="torch's add_ rounds twice on this CPU")
@pytest.mark.parametrize("start", [0, 5, 2047, 2048, 2**33 - 3000])
@pytest.mark.parametrize("n", [1, 300, 2049, 6001])
def test_every_variant_adds_a_direction_with_the_bits_of_drawing_it_and_adding_with_torch(
        start, n):
    """``gauss_axpy`` (the direction drawn tile by tile, never stored) rounds as torch's
    ``add_`` with ``alpha`` does, and as ``zero_`` then ``add_`` with ``init`` (a product of
    -0.0 gives +0.0); tiles cut across the stream's 2**33 boundary."""
    g = torch.Generator().manual_seed(n)
    base = torch.randn(n, generator=g) * 100
    base[::7] = 0.0
    alpha = 0.37 if n % 2 else -1e-3
    u = torch_range(0xDEADBEEF, start, n)
    want = base.clone().add_(u, alpha=alpha)
    want_init = torch.zeros(n).add_(u, alpha=-0.0 if n == 300 else alpha)
    for variant in kernels.info()["variants"]:
        with kernels._variant(variant):
            got = base.clone()
            kernels.gauss_axpy(got, start, 0xDEADBEEF, alpha)
            fresh = torch.full((n,), float("nan"))
            kernels.gauss_axpy(fresh, start, 0xDEADBEEF, -0.0 if n == 300 else alpha,
                               init=True)
        assert torch.equal(bits(got), bits(want)), variant
        assert torch.equal(bits(fresh), bits(want_init)), variant


def test_pairs_past_two_to_the_32_take_new_keys():
    """Entries from 2**33 on are pairs from 2**32 on: other keys, still one stream."""
    across = torch_range(7, 2**33 - 64, 128)
    assert torch.equal(bits(across[:64]), bits(torch_range(7, 2**33 - 64, 64)))
    assert torch.equal(bits(across[64:]), bits(torch_range(7, 2**33, 64)))
    assert not torch.equal(across[64:], torch_range(7, 0, 64))


def test_float64_and_other_dtypes_get_the_float32_draws():
    for dtype in (torch.float64, torch.bfloat16):
        out = torch.empty(300, dtype=dtype)
        counter.gaussian_range(3, 10, out)
        assert torch.equal(out, torch_range(3, 10, 300).to(dtype))


def test_layout_directions_are_the_stream_keyed_by_each_block_seed():
    x, y = torch.zeros(5, 7), torch.zeros(3)
    u = Layout([x, y]).sample(123)
    flat = torch.cat([v.reshape(-1) for v in u])
    assert torch.equal(flat, torch_range(123, 0, 38))


def test_the_numbers_behave_like_standard_normals():
    z = torch.cat([torch_range(k, 0, 100_000).double() for k in range(4)])
    n = z.numel()
    assert abs(float(z.mean())) < 4 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 4 * math.sqrt(2 / n)
    assert abs(float((z**4).mean()) - 3) < 4 * math.sqrt(96 / n)
    assert abs(float((z.abs() > 2).double().mean()) - 0.0455) < 0.003
    assert float(z.abs().max()) <= math.sqrt(2 * 24 * math.log(2)) + 1e-5  # u >= 2**-24
    assert abs(float((z[:-1] * z[1:]).mean())) < 4 / math.sqrt(n)  # neighbours uncorrelated


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_stream_on_cuda_is_the_cpu_stream():
    cuda = torch.device("cuda")
    for start, n in ((0, 1), (5, 1000), (2**33 - 10, 100_003)):
        got = torch.empty(n, device=cuda)
        counter.gaussian_range(9, start, got)
        want = torch.empty(n)
        counter.gaussian_range(9, start, want)
        assert torch.equal(bits(got.cpu()), bits(want))


def test_no_entry_exceeds_the_bound_the_inference_update_relies_on():
    """The radius is largest at the smallest uniform, 2**-24 (counters whose first hash's top
    24 bits are 0); the inference memory mode's one-pass update takes ``Gaussian.largest`` as
    a bound on every entry."""
    from torchzo.oracle.directions.gaussian import GAUSSIAN

    w1 = torch.arange(0, 256 * 64, dtype=torch.int64)  # (w1 >> 8) + 1 from 1 to 64
    w2 = torch.randint(0, 2**32, (w1.numel(),), dtype=torch.int64,
                       generator=torch.Generator().manual_seed(0))
    w2[:8] = torch.tensor([0, 2**30, 2**31, 3 * 2**30, 2**30 - 1, 2**31 - 1, 2**32 - 1, 1])
    cos, sin = counter._pairs(w1, w2)
    largest = max(float(cos.abs().max()), float(sin.abs().max()))
    assert math.sqrt(48 * math.log(2)) * (1 - 1e-6) < largest <= GAUSSIAN.largest
    assert float(torch_range(5, 0, 1 << 20).abs().max()) < GAUSSIAN.largest
