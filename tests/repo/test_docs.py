"""Documentation stays true: relative links resolve and Python code blocks run."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

import torchzo

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         *sorted((ROOT / "docs" / "benchmarks").glob("*.md")), ROOT / "pretrained" / "README.md",
         *sorted((ROOT / "research").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    text = page.read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    for target in targets:
        if re.match(r"[a-z]+://", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name} links to missing {target}"


def _blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


WITH_CODE = [p for p in sorted((ROOT / "docs").glob("*.md")) if _blocks(p)]


def test_the_guides_have_code():
    assert {p.name for p in WITH_CODE} >= {"meta-training.md", "zolstm.md", "pretrained.md"}


@pytest.mark.parametrize("page", WITH_CODE, ids=lambda p: p.name)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    """Each page's Python blocks run in order in one namespace (with training made tiny)."""
    blocks = _blocks(page)
    code = "\n".join(blocks)
    # The meta-training guide trains for minutes; the same code with one tiny epoch per stage.
    code = re.sub(r"StageConfig\(epochs=\d+, problems=\d+", "StageConfig(epochs=1, problems=1",
                  code)
    code = code.replace("MetaConfig(update_stage", "MetaConfig(val_problems=1, horizon=10, "
                        "update_stage")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    exec(compile(code, str(page), "exec"), {})  # noqa: S102


def test_api_reference_is_generated_from_the_current_docstrings():
    spec = importlib.util.spec_from_file_location("build", ROOT / "docs" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert build.main(["--check"]) == 0, "docs/api.md is stale: run 'python docs/build.py'"
    text = (ROOT / "docs" / "api.md").read_text()
    for name in torchzo.__all__:
        assert f"torchzo.{name}" in text
    assert "*(no docstring)*" not in text


def test_pretrained_page_shows_available_as_it_returns():
    text = (ROOT / "docs" / "pretrained.md").read_text()
    shown = re.search(r"print\(torchzo\.pretrained\.available\(\)\)\s+# (\[.*\])", text)
    assert shown and shown.group(1) == repr(torchzo.pretrained.available())
