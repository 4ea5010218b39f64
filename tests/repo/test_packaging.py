"""The wheel's contents, the README's commands and the demo stay in step with the code."""
from __future__ import annotations

import ast
import configparser
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import torchzo
from torchzo.__main__ import main as demo_main

ROOT = Path(__file__).resolve().parents[2]
# Repository-level packages for maintainers, run from a checkout: never in the wheel.
CHECKOUT_ONLY = ("benchmarks", "research", "tools")


def _listed_packages() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return set(cfg["options"]["packages"].split())


def test_every_subpackage_is_listed_in_setup_cfg():
    listed = _listed_packages()
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "torchzo").rglob("__init__.py")}
    assert found <= listed, f"add to setup.cfg [options] packages: {sorted(found - listed)}"
    assert "torchzo._weights" in listed


def test_the_package_neither_lists_nor_imports_the_checkout_only_packages():
    assert all(p == "torchzo" or p.startswith("torchzo.") for p in _listed_packages())
    for path in (ROOT / "torchzo").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in CHECKOUT_ONLY, f"{path} imports {name}"


def build_wheel(tmp_path: Path, **env: str) -> set[str]:
    """The names in a wheel of this checkout, built offline by this environment's setuptools
    (one that can build wheels by itself) with ``env`` added to the environment."""
    pytest.importorskip("setuptools.command.bdist_wheel")
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "_kernels.*")  # no built kernels
    for name in ("torchzo", "pretrained", *CHECKOUT_ONLY):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")],
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, **env})
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {name.split("/")[0] for name in names}
    assert tops == {"torchzo", wheel.name.split("-py")[0].split("-cp")[0] + ".dist-info"}, tops
    return names


def kernel_files(names: set[str]) -> list[str]:
    return sorted(n for n in names if n.startswith("torchzo/oracle/_kernels"))


@pytest.mark.slow
def test_the_built_wheel_holds_the_package_the_weights_and_the_kernels_only(tmp_path):
    names = build_wheel(tmp_path)
    assert {"torchzo/_weights/manifest.json", "torchzo/meta/__main__.py",
            "torchzo/oracle/kernels.c"} <= names
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler: the wheel holds no kernels")
    # The library and its build record (torchzo.oracle.kernels loads one only with the other).
    assert [Path(n).suffix for n in kernel_files(names)] == [".json", ".so"], kernel_files(names)


@pytest.mark.slow
def test_without_a_compiler_the_wheel_builds_without_the_kernels(tmp_path):
    names = build_wheel(tmp_path, CC="/bin/false")  # what setuptools compiles with
    assert kernel_files(names) == [] and "torchzo/oracle/kernels.py" in names


def test_ci_runs_the_readme_setup_commands_verbatim():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Set-up.*?```bash\n(.*?)```", readme, re.S)
    assert block, "README has no bash block under '## Set-up'"
    commands = [line for line in block.group(1).splitlines() if line.strip()]
    assert len(commands) == 2
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in ci, f".ci/run does not run: {command}"
    assert "pytest" in commands[1]


def test_demo_prints_loss_against_queries(capsys):
    demo_main(["--problem", "quadratic", "--steps", "20", "--dim", "10"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()]
    names = [r[0] for r in rows if r]
    for name in ("ZOSGD", "ZOSignSGD", "ZOAdam"):
        assert name in names
    queries = next(r for r in rows if r and r[0] == "queries")
    assert queries[-1] == str(20 * 21)
    for r in rows:
        if r and r[0] in ("ZOSGD", "ZOAdam"):
            assert float(r[-1]) < float(r[1])


def test_version_and_public_names():
    assert re.fullmatch(r"\d+\.\d+\.\d+", torchzo.__version__)
    for name in torchzo.__all__:
        assert getattr(torchzo, name) is not None


def test_import_takes_no_network_and_the_module_runs_as_a_script():
    out = subprocess.run([sys.executable, "-c", "import torchzo; torchzo.ZOSGD; "
                          "torchzo.ZOSignSGD; torchzo.ZOAdam; torchzo.ZOLSTM"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_readme_python_blocks_run():
    """The README's code runs as written (its blocks share one namespace, in order)."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    assert float(namespace["loss"]) < 0.25  # the ZOLSTM block's final loss (0.25 at w = 0)


def test_demo_on_binclass_includes_the_learned_optimizer(capsys):
    demo_main(["--steps", "30"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    lstm = next(r for r in rows if r and r[0] == "ZOLSTM:binclass")
    assert float(lstm[-1]) < float(lstm[1])
