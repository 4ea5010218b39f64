"""Benchmarks are scripts, not tests: these only smoke-run their tiny versions."""
from __future__ import annotations

import json

from torchzo.benchmarks import overhead


def test_overhead_quick_writes_json_and_markdown(tmp_path):
    result = overhead.main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "overhead.json").read_text())
    assert data["machine"] and result
    text = (tmp_path / "overhead.md").read_text()
    assert "ZOAdam" in text and "| d |" in text
