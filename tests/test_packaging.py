"""The wheel's contents, the README's commands and the demo stay in step with the code."""
from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

import torchzo
from torchzo.__main__ import main as demo_main

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "torchzo").rglob("__init__.py")}
    assert found <= listed, f"add to setup.cfg [options] packages: {sorted(found - listed)}"
    assert "torchzo._weights" in listed


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
    lstm = next(r for r in rows if r and r[0] == "ZOLSTM")
    assert float(lstm[-1]) < float(lstm[1])
