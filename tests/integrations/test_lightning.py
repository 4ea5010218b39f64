"""The Lightning example: manual optimisation, one torchzo step per batch."""
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("lightning", reason="lightning is not installed (pip install lightning)")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lightning_finetune.py"


# Lightning's own use of torch's pytree API, not this project's.
@pytest.mark.filterwarnings("ignore:.*LeafSpec.*")
def test_lightning_example_fine_tunes_with_zo_steps():
    spec = importlib.util.spec_from_file_location("lightning_finetune", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--steps", "40"])
    assert out["last"] < out["first"]
