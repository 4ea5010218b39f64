"""The problem classes: the Problem API, lazy attack tasks, and tasks below the optimizers."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import torchzo.datasets
from torchzo.datasets import DataError
from torchzo.tasks import AttackTask, Problem, Quadratic
from torchzo.tasks.targets import make_model

TASKS = Path(torchzo.tasks.__file__).parent
PACKAGE = ["torchzo", "tasks"]
# What sits above the problems: the optimizers, meta-training, and the gradient oracle.
ABOVE = ("torchzo.optim", "torchzo.meta", "torchzo.oracle")


def test_quadratic_is_a_problem_whose_loss_is_its_call():
    quad = Quadratic(7, seed=3)
    assert isinstance(quad, Problem) and quad.dim == 7 and quad.sample_batch(None) is None
    X = torch.randn(5, 7, dtype=torch.float64)
    assert torch.equal(quad.loss(X), quad(X)) and quad.loss(X).shape == (5,)
    assert torch.equal(quad.loss(X[0]), quad(X[0]))
    torch.testing.assert_close(quad.objective(quad.x0), quad(quad.x0), rtol=1e-12, atol=0)
    assert float(quad.objective(quad.x_star)) == 0.0


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` (a module of torchzo.tasks) imports from."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = PACKAGE[:len(PACKAGE) + 1 - node.level] if node.level else []
            module = ".".join([*base, *filter(None, [node.module])])
            # ``from .. import optim`` names the module in the alias.
            names.update([module, *(f"{module}.{alias.name}" for alias in node.names)])
    return names


def test_the_import_resolver_sees_relative_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from ..optim import ZOSGD\nfrom .. import meta\nfrom .base import Task\n"
                      "import torchzo.oracle.estimator\n")
    names = _imported_modules(source)
    assert {"torchzo.optim", "torchzo.meta", "torchzo.tasks.base",
            "torchzo.oracle.estimator"} <= names


@pytest.mark.parametrize("path", sorted(TASKS.glob("*.py")), ids=lambda p: p.name)
def test_tasks_import_nothing_from_the_layers_above(path):
    bad = {m for m in _imported_modules(path)
           if any(m == a or m.startswith(f"{a}.") for a in ABOVE)}
    assert not bad, f"{path.name} imports {sorted(bad)}"


# -- the attack task loads lazily ---------------------------------------------------------------

def test_attack_task_is_built_without_its_data_or_target(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHZO_CACHE", str(tmp_path / "cache"))  # no trained target there
    (tmp_path / "data").mkdir()
    task = AttackTask("mnist", root=tmp_path / "data")
    assert task.q == 20 and task.sizes["train"] == 100
    assert not {"model", "_correct"} & set(vars(task))  # nothing cached yet
    with pytest.raises(DataError, match="missing data file"):
        task.problems("train")
    with pytest.raises(FileNotFoundError, match="no trained mnist target"):
        _ = task.model


@pytest.mark.parametrize("bad", [dict(data="svhn"), dict(data="svhn", mu=1e-3),
                                 dict(norm="l3"), dict(sizes={"train": 1, "test": 1}),
                                 dict(sizes={"train": 1, "val": -1, "test": 1}),
                                 dict(sizes={"train": 1.5, "val": 1, "test": 1})])
def test_attack_task_checks_its_arguments_when_built(bad, tmp_path):
    with pytest.raises(ValueError):
        AttackTask(**{"root": tmp_path, **bad})


def test_attack_task_loads_the_test_set_once_and_keeps_correct_images(monkeypatch):
    torch.manual_seed(0)
    model = make_model("mnist").eval()
    x = torch.rand(12, 1, 28, 28)
    with torch.no_grad():
        predicted = model(x).argmax(-1)
    wrong = torch.arange(12) % 3 == 0  # every third image is misclassified
    y = torch.where(wrong, (predicted + 1) % 10, predicted)
    loads = []

    def fake_mnist(split, root):
        loads.append((split, root))
        return x, y

    monkeypatch.setattr(torchzo.datasets, "load_mnist", fake_mnist)
    task = AttackTask("mnist", model=model, root="somewhere",
                      sizes={"train": 3, "val": 2, "test": 3})
    assert not loads and all(p.requires_grad for p in model.parameters())
    splits = {s: task.problems(s) for s in ("train", "val", "test")}
    assert loads == [("test", "somewhere")] and task.model is model
    assert not any(p.requires_grad for p in model.parameters())
    assert torch.equal(task.images, x[~wrong]) and torch.equal(task.labels, y[~wrong])
    assert [p.label for ps in splits.values() for p in ps] == y[~wrong].tolist()
    assert task.problems("val")[0].seed == 3 and loads == [("test", "somewhere")]
    with pytest.raises(ValueError, match="only 8 correctly classified"):
        AttackTask("mnist", model=model, sizes={"train": 5, "val": 2, "test": 2}).problems("test")
