"""The attack task, the attack API and the target models."""
from __future__ import annotations

import pytest
import torch
from data_marks import needs_mnist as needs_data
from torch import nn

import torchzo
from torchzo.tasks.attack import AttackProblem, AttackTask, attack_loss
from torchzo.tasks.targets import make_model, train_target


def _toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


def test_attack_loss_rows_are_independent_and_floor_at_minus_kappa():
    model, image = _toy_model(), torch.rand(1, 4, 4)
    deltas = 0.3 * torch.randn(5, 16)
    together = attack_loss(model, image, 1, deltas, c=0.1)
    one_by_one = torch.cat([attack_loss(model, image, 1, d[None], c=0.1) for d in deltas])
    torch.testing.assert_close(together, one_by_one)
    big = torch.zeros(1, 16)
    with torch.no_grad():
        model[1].bias.copy_(torch.tensor([0.0, -50.0, 0.0]))  # class 1 is never predicted
        assert float(attack_loss(model, image, 1, big, c=0.0, kappa=2.0)) == -2.0
        l2 = attack_loss(model, image, 1, torch.full((1, 16), 0.1), c=1.0, kappa=2.0, norm="l2")
    torch.testing.assert_close(l2, torch.tensor([-2.0 + 16 * 0.01]))


def test_adversarial_images_stay_in_the_unit_box():
    problem = AttackProblem(_toy_model(), torch.rand(1, 4, 4), 0)
    x = problem.adversarial(5 * torch.randn(16))
    assert float(x.min()) >= 0 and float(x.max()) <= 1 and x.shape == (1, 4, 4)


@pytest.mark.parametrize("optimizer", ["ZOAdam", "ZOSGD", "ZOLSTM"])
def test_attack_api_fools_a_toy_model(optimizer):
    model, image = _toy_model(), torch.rand(1, 4, 4)
    label = int(model(image[None]).argmax())
    kwargs = {"lr": 0.5} if optimizer == "ZOSGD" else {}
    # ZOAdam crosses the decision boundary after 60 to 100 steps, depending on the seed.
    result = torchzo.attack(model, image, label, optimizer=optimizer, steps=100, q=6, c=0.01,
                            **kwargs)
    assert result.queries == 100 * 7
    assert len(result.losses) == 101 and result.losses[-1] < result.losses[0]
    assert result.adversarial.shape == image.shape
    change = (result.adversarial - image).abs().sum()
    assert result.distortion == pytest.approx(float(change), rel=1e-5)
    assert result.success == (int(model(result.adversarial[None]).argmax()) != label)
    if optimizer != "ZOLSTM":  # the shipped ZO-LSTM was trained for another task and scale
        assert result.success


def test_cifar_model_shape():
    assert make_model("cifar10")(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError):
        make_model("svhn")


@needs_data
def test_target_training_is_deterministic_and_learns():
    runs = [train_target("mnist", epochs=1, limit=512, batch=64) for _ in range(2)]
    for a, b in zip(runs[0][0].state_dict().values(), runs[1][0].state_dict().values()):
        assert torch.equal(a, b)
    assert runs[0][1]["test_accuracy"] > 0.5


@needs_data
def test_attack_task_splits_are_disjoint_correctly_classified_images():
    model, _ = train_target("mnist", epochs=1, limit=512, batch=64)
    task = AttackTask("mnist", model=model, sizes={"train": 5, "val": 3, "test": 4})
    splits = {s: task.problems(s) for s in ("train", "val", "test")}
    ids = [id(p.image.untyped_storage()) for ps in splits.values() for p in ps]
    images = torch.stack([p.image for ps in splits.values() for p in ps])
    assert len(torch.unique(images.reshape(len(images), -1), dim=0)) == 12
    for p in splits["test"]:
        assert int(model(p.image[None]).argmax()) == p.label
        assert p.loss(p.x0[None]).shape == (1,)
    assert task.q == 20 and len(ids) == 12


@needs_data
def test_targets_cli_caches_weights_and_accuracy(tmp_path, monkeypatch):
    from torchzo.tasks import targets

    monkeypatch.setenv("TORCHZO_CACHE", str(tmp_path))
    info = targets.main(["--data", "mnist", "--epochs", "1", "--limit", "256"])
    model = targets.load_target("mnist")
    assert targets.target_info("mnist") == info and info["train_images"] == 256
    trained = train_target("mnist", epochs=1, limit=256)[0]
    for a, b in zip(model.state_dict().values(), trained.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="python -m torchzo.tasks.targets --data cifar10"):
        targets.load_target("cifar10")


def test_attack_tasks_are_registered_and_name_the_missing_target(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHZO_CACHE", str(tmp_path))
    task = torchzo.tasks.get_task("mnist-attack")  # the target is loaded on first use
    assert task.name == "mnist-attack"
    with pytest.raises(FileNotFoundError, match="no trained mnist target"):
        _ = task.model


@pytest.mark.slow
@needs_data
def test_attack_benchmark_quick_reports_every_method(tmp_path):
    from benchmarks.paper import attack

    torch.manual_seed(0)
    target = tmp_path / "target.pt"
    torch.save(make_model("mnist").state_dict(), target)  # untrained: enough for a smoke run
    data = attack.main(["--quick", "--target", str(target), "--weights", "u=untrained",
                        "--no-plots", "--out", str(tmp_path)])
    labels = {"ZO-SGD", "ZO-signSGD", "ZO-Adam", *(f"ZO-LSTM{s} (u)" for s in attack.VARIANTS)}
    assert set(data["comparison"]["rows"]) == labels
    for outcome in data["outcomes"].values():
        assert 0 <= outcome["success_rate"] <= 1
    assert [r["q"] for r in data["cosine"]] == [5, 20]
    assert all(-1 <= r["learned"] <= 1 for r in data["cosine"])
    assert (tmp_path / "attack-mnist.md").read_text().count("| ZO-") == len(labels)


def test_cifar_attack_task_carries_its_own_mu_into_meta_training(monkeypatch):
    """float32's default mu (1e-3) exceeds the start |delta| (1e-4): on CIFAR-10 the task
    asks for 1e-5, meta-training uses it unless --mu says otherwise, MNIST keeps the default."""
    import torchzo.meta.__main__ as cli

    sizes = {"train": 1, "val": 1, "test": 1}
    cifar = make_model("cifar10").eval()
    task = AttackTask("cifar10", model=cifar, sizes=sizes)
    assert task.mu == 1e-5
    assert AttackTask("cifar10", model=cifar, sizes=sizes, mu=1e-4).mu == 1e-4
    assert AttackTask("mnist", model=make_model("mnist").eval(), sizes=sizes).mu is None
    monkeypatch.setattr(cli, "get_task", lambda name: task)
    parse = cli.build_parser().parse_args
    assert cli.config_from_args(parse(["train", "--task", "cifar-attack", "--out", "w.pt"])).mu \
        == 1e-5
    assert cli.config_from_args(parse(["train", "--task", "cifar-attack", "--out", "w.pt",
                                       "--mu", "1e-3"])).mu == 1e-3
