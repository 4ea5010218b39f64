"""The compiled Rademacher kernels give the bits of the torch ops they replace, or stay out.

Every comparison runs the same computation with the kernels and under ``kernels.disabled()``
(torch ops alone) and asks for identical bits: the kernels may change a step's time, never its
result. Where torchzo was installed without a C compiler the kernel half of these tests cannot
run, and they say so (a skip with the reason); CI's machine has one. The library comes from the
install (setup.py) and is loaded only once it matches its build record; the developer build
compiles it at run time into a private folder, under a lock, and tries it in a child process.
"""
from __future__ import annotations

import ast
import json
import math
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from zo_testing import FAST, all_same_bits, snapshot

import torchzo
from torchzo.optim._guard import all_finite, max_abs
from torchzo.oracle import Layout, kernel_build, kernels
from torchzo.oracle.directions import Signs, _draw_signs, _unpack

needs_kernels = pytest.mark.skipif(not kernels.available(),
                                   reason=f"kernels unavailable: {kernels.reason()}")
CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[2]
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
    kernels.sign_perturb(n, offset, out, base, bits, alpha)
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
    kernels.sign_accumulate(n, offset, g, terms, coeffs, init)
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
    kernels.sign_accumulate(n, offset, g, bits[:m], coeffs,
                            perturb=(out, base, bits[m], 0.25))
    expected = base.clone()
    for b, c in zip(bits, coeffs):
        expected.add_(unpacked(b, offset, n, dtype), alpha=c)
    perturbed = torch.add(base, unpacked(bits[m], offset, n, dtype), alpha=0.25)
    return all_same_bits([out, g], [perturbed, expected])


@needs_kernels
@pytest.mark.parametrize("variant", ["plain", "avx2", "avx512"])
def test_every_variant_this_cpu_runs_gives_the_same_bits(variant):
    # The library holds a variant per instruction set (AVX-512 masks, sign tables in AVX2 or
    # plain vectors) and runs the best the CPU has, which the other tests check: run the others.
    if variant not in kernels.info()["variants"]:
        pytest.skip(f"this CPU does not run the {variant} variant")
    with kernels._variant(variant):
        assert kernels.info()["variant"] == variant
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
        for n in (1, 63, 1000):
            fast = _draw_signs(n, CPU, 2**63 - 1).clone()
            with kernels.disabled():
                assert torch.equal(fast, _draw_signs(n, CPU, 2**63 - 1))
    assert kernels.info()["variant"] == kernels.info()["variants"][-1]  # the best, again


@needs_kernels
def test_a_variant_this_cpu_lacks_is_refused_and_the_variant_in_use_stays():
    with pytest.raises(ValueError, match="does not run"):
        with kernels._variant("no-such-isa"):
            pass
    assert kernels.info()["variant"] == kernels.info()["variants"][-1]


@needs_kernels
def test_a_zero_term_leaves_positive_zeros_as_zero_plus_torch_would():
    # 0.0 + (-0.0) is +0.0: starting from "init" must not start from the first term itself.
    bits = torch.full((128,), 255, dtype=torch.uint8)  # every sign -1
    g = torch.empty(1000)
    kernels.sign_accumulate(1000, 0, g, [bits], [0.0], init=True)
    assert not torch.signbit(g).any()


@needs_kernels
def test_the_kernels_refuse_what_they_cannot_write_safely():
    bits = torch.zeros(16, dtype=torch.uint8)
    good = torch.zeros(100)
    with pytest.raises(ValueError, match="contiguous CPU"):
        kernels.sign_perturb(100, 0, torch.zeros(200)[::2], good, bits, 1.0)
    with pytest.raises(ValueError, match="one dtype"):
        kernels.sign_perturb(100, 0, good, good.double(), bits, 1.0)
    with pytest.raises(ValueError, match="n elements"):
        kernels.sign_accumulate(99, 0, good, [bits], [1.0])
    with pytest.raises(ValueError, match="at least 13 bytes"):
        kernels.sign_accumulate(100, 0, good, [bits[:12]], [1.0])
    with pytest.raises(ValueError, match="terms"):
        kernels.sign_accumulate(100, 0, good, [bits] * (kernels.GROUP + 1),
                                [1.0] * (kernels.GROUP + 1))
    with pytest.raises(ValueError, match="terms"):  # a coefficient per term
        kernels.sign_accumulate(100, 0, good, [bits, bits], [1.0])
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


# -- where the library comes from, and what is refused ---------------------------------------------


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})


# Three steps; {setup} may point the loader at another library first. Prints whether the
# kernels ran, why not, and the parameters' bits.
PROBE = """
import pathlib, torch, torchzo
from torchzo.oracle import kernels
{setup}
torch.manual_seed(0)
p = torch.nn.Parameter(torch.randn(300))
opt = torchzo.ZOSGD([p], q=9, directions_kind="rademacher")
for _ in range(3):
    opt.step(lambda: (p ** 2).sum())
print(kernels.available(), "|", kernels.reason())
print(p.double().sum().item().hex(), p.sum().item().hex())
"""


def probe(setup: str = "", **env: str) -> tuple[str, str]:
    """Run :data:`PROBE`; return its two lines (kernels, parameters)."""
    out = run_python(PROBE.format(setup=setup), **env)
    assert out.returncode == 0, out.stderr[-3000:]
    kernels_line, params = out.stdout.splitlines()[-2:]
    return kernels_line, params


def installed_at(path: Path) -> str:
    return f"kernels._INSTALLED = pathlib.Path({str(path)!r})"


@pytest.fixture(scope="module")
def torch_ops_bits() -> str:
    line, params = probe(TORCHZO_KERNELS="0")
    assert line == "False | disabled by TORCHZO_KERNELS=0"
    return params


@pytest.mark.slow
@needs_kernels
def test_the_installed_kernels_run_without_writing_to_the_cache(tmp_path, torch_ops_bits):
    line, params = probe(TORCHZO_CACHE=str(tmp_path))
    assert line == "True | None"
    assert params == torch_ops_bits  # the same trajectory as torch ops alone
    assert not list(tmp_path.iterdir())  # nothing compiled, nothing cached
    assert Path(kernels.info()["library"]) == kernels._INSTALLED


@pytest.mark.slow
def test_without_the_installed_library_the_oracle_runs_on_torch_ops_and_says_why(
        tmp_path, torch_ops_bits):
    # What an install without a C compiler leaves: no library beside kernels.py.
    line, params = probe(installed_at(tmp_path / "_kernels.so"), TORCHZO_CACHE=str(tmp_path))
    assert line.startswith("False | not built") and "C compiler" in line
    assert params == torch_ops_bits
    assert [p.name for p in tmp_path.iterdir()] == []


def copy_installed(tmp_path: Path) -> Path:
    target = tmp_path / kernels._INSTALLED.name
    shutil.copy(kernels._INSTALLED, target)
    shutil.copy(kernel_build.record_path(kernels._INSTALLED), kernel_build.record_path(target))
    return target


def truncated_copy(tmp_path: Path) -> Path:
    lib = copy_installed(tmp_path)
    data = lib.read_bytes()
    lib.write_bytes(data[:len(data) // 2])  # loading this one maps pages past its end: SIGBUS
    return lib


@needs_kernels
def test_a_truncated_library_is_refused_without_a_crash(tmp_path):
    with pytest.raises(RuntimeError, match="does not match its build record"):
        kernels._open(truncated_copy(tmp_path))


@pytest.mark.slow
@needs_kernels
def test_with_a_truncated_library_steps_run_on_torch_ops(tmp_path, torch_ops_bits):
    line, params = probe(installed_at(truncated_copy(tmp_path)))
    assert line.startswith("False | refused") and "truncated or replaced" in line
    assert params == torch_ops_bits


@needs_kernels
def test_a_library_anyone_may_write_is_refused(tmp_path):
    lib = copy_installed(tmp_path)
    lib.chmod(0o777)
    with pytest.raises(RuntimeError, match="others may write it"):
        kernels._open(lib)
    lib.chmod(0o775)  # group-writable: refused only where the folder is the user's own
    kernels._open(lib)
    with pytest.raises(RuntimeError, match="others may write it"):
        kernels._open(lib, private=True)


@needs_kernels
def test_a_library_built_from_another_source_is_refused(tmp_path):
    lib = copy_installed(tmp_path)
    record = json.loads(kernel_build.record_path(lib).read_text())
    kernel_build.record_path(lib).write_text(json.dumps({**record, "source_sha256": "0" * 64}))
    with pytest.raises(RuntimeError, match="built from another kernels.c"):
        kernels._open(lib)


def compile_c(tmp_path: Path, name: str, code: str) -> Path:
    if shutil.which("cc") is None:
        pytest.skip("needs a C compiler")
    (tmp_path / f"{name}.c").write_text(code)
    lib = tmp_path / f"{name}.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(tmp_path / f"{name}.c")],
                   check=True)
    return lib


def symbol_less_library(tmp_path: Path) -> Path:
    """A file that matches its record (as a planted or half-built one could) but lacks every
    kernel but one."""
    lib = compile_c(tmp_path, "_kernels", "void zo_sign_bits(void) {}\n")
    record = {"sha256": kernel_build.sha256(lib),
              "source_sha256": kernel_build.sha256(kernels._SOURCE)}
    kernel_build.record_path(lib).write_text(json.dumps(record))
    return lib


def test_a_library_missing_a_symbol_is_refused(tmp_path):
    # The loader binds every symbol before it says yes.
    with pytest.raises(RuntimeError, match="undefined symbol"):
        kernels._open(symbol_less_library(tmp_path))


@pytest.mark.slow
def test_with_a_library_missing_a_symbol_every_step_runs(tmp_path, torch_ops_bits):
    lib = symbol_less_library(tmp_path)
    line, params = probe(installed_at(lib))
    assert line.startswith("False | refused") and "undefined symbol" in line
    assert params == torch_ops_bits
    # Gaussian and orthogonal directions do not care either.
    out = run_python(PROBE.format(setup=installed_at(lib)).replace('"rademacher"', '"gaussian"'))
    assert out.returncode == 0, out.stderr[-3000:]


def test_the_flags_of_the_install_and_the_developer_build_agree():
    tree = ast.parse((ROOT / "setup.py").read_text())
    (flags,) = [ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                and any(getattr(t, "id", None) == "CFLAGS" for t in node.targets)]
    assert flags == kernel_build.CFLAGS


# -- the developer build: compiled at run time, in a private folder, under a lock ---------------


@pytest.fixture
def developer_build(tmp_path, monkeypatch):
    """An empty ``TORCHZO_CACHE``; afterwards, this process back on the installed library."""
    if shutil.which("cc") is None:
        pytest.skip("needs a C compiler")
    monkeypatch.setenv("TORCHZO_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "cc")
    yield tmp_path / "kernels"
    kernels._built[0] = None
    kernels._load.cache_clear()


@pytest.mark.slow
def test_a_developer_build_goes_to_a_private_folder_and_gives_the_same_bits(developer_build):
    lib = kernels.build()
    assert lib.parent == developer_build and kernels.info()["library"] == str(lib)
    assert stat.S_IMODE(developer_build.stat().st_mode) == 0o700
    assert developer_build.stat().st_uid == os.getuid()
    assert sorted(p.name for p in developer_build.iterdir()) == sorted(
        ["build.lock", lib.name, kernel_build.record_path(lib).name])  # no temporary left
    assert kernels.available(), kernels.reason()
    assert "-ffp-contract=off" in kernels.info()["command"]
    for variant in kernels.info()["variants"]:
        with kernels._variant(variant):
            for n, offset, m in ((1000, 3, 8), (4099, 13, 5), (64, 0, 1)):
                for dtype in FLOATS:
                    assert _same_as_torch_ops(n, offset, dtype, m, seed=n), (variant, n, dtype)
    assert kernels.build() == lib  # built once: the same source and command reuse it


def test_a_developer_build_refuses_a_folder_others_may_use(developer_build):
    developer_build.mkdir(mode=0o755)
    developer_build.chmod(0o755)
    with pytest.raises(RuntimeError, match="chmod 700"):
        kernels.build()
    assert not kernels._built[0]
    developer_build.chmod(0o700)
    try:
        os.chown(developer_build, 65534, -1)
    except PermissionError:
        return  # only root can give a folder away; the mode check above stands
    with pytest.raises(RuntimeError, match="belongs to uid 65534"):
        kernels.build()
    developer_build.rmdir()
    developer_build.symlink_to(developer_build.parent)
    with pytest.raises(RuntimeError, match="not a folder"):
        kernels.build()
    assert not kernels._built[0]


@pytest.mark.slow
def test_concurrent_developer_builds_compile_once(developer_build, tmp_path):
    # torchrun's ranks at once: one compiles under the lock, the other waits and loads it.
    log = tmp_path / "compiles.log"
    cc = tmp_path / "logging-cc"
    cc.write_text(f'#!/bin/sh\necho x >> {log}\nsleep 1\nexec cc "$@"\n')
    cc.chmod(0o755)
    code = ("from torchzo.oracle import kernels; kernels.build(); "
            "print(kernels.available(), kernels.info()['library'])")
    env = {**os.environ, "CC": str(cc), "TORCHZO_CACHE": str(developer_build.parent)}
    ranks = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    outs = [rank.communicate(timeout=300)[0] for rank in ranks]
    assert all(rank.returncode == 0 for rank in ranks)
    assert outs[0] == outs[1] and outs[0].startswith("True ")
    assert log.read_text() == "x\n"


@pytest.mark.slow
def test_a_developer_build_that_crashes_its_check_is_never_loaded(developer_build, tmp_path,
                                                                  monkeypatch):
    # A "compiler" whose library dies when loaded (as a bad file or a missing instruction
    # would): the child process that tries it dies, this one goes on without it.
    trap = compile_c(tmp_path, "trap", "__attribute__((constructor)) static void f(void) "
                     "{ __builtin_trap(); }\n")
    cc = tmp_path / "trap-cc"
    cc.write_text(f'#!/bin/sh\nwhile [ "$1" != -o ]; do shift; done\ncp {trap} "$2"\n')
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    with pytest.raises(RuntimeError, match="failed its check: signal"):
        kernels.build()
    assert [p.name for p in developer_build.iterdir()] == ["build.lock"]
    assert not kernels._built[0]


@pytest.mark.slow
def test_kernels_build_in_the_environment_builds_at_the_first_use(tmp_path, torch_ops_bits):
    if shutil.which("cc") is None:
        pytest.skip("needs a C compiler")
    line, params = probe(TORCHZO_KERNELS="build", TORCHZO_CACHE=str(tmp_path), CC="cc")
    assert line == "True | None" and params == torch_ops_bits
    assert list((tmp_path / "kernels").glob("signs-*.so"))
    nocc = probe(TORCHZO_KERNELS="build", TORCHZO_CACHE=str(tmp_path),
                 CC=str(tmp_path / "no-such-cc"))
    assert nocc == ("False | no C compiler ('%s' not found; set CC)" % (tmp_path / "no-such-cc"),
                    torch_ops_bits)


@pytest.mark.slow
def test_a_compiler_that_fails_leaves_the_kernels_off_with_its_message(tmp_path,
                                                                       torch_ops_bits):
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\necho 'fake compiler: no' >&2\nexit 1\n")
    fake.chmod(0o755)
    line, params = probe(TORCHZO_KERNELS="build", CC=str(fake),
                         TORCHZO_CACHE=str(tmp_path / "cache"))
    assert "could not build the kernels" in line and "fake compiler: no" in line
    assert params == torch_ops_bits


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
