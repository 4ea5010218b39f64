"""ZOTrainer: transformers' Trainer, a torchzo step per batch, on a tiny random OPT."""
import pytest
import torch

import torchzo

transformers = pytest.importorskip("transformers", reason="the transformers extra is not installed")
pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate")

from torchzo.integrations.huggingface import ZOTrainer  # noqa: E402


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=16, length=12, vocab=64):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_opt():
    torch.manual_seed(0)
    config = transformers.OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                    ffn_dim=32, num_attention_heads=2, word_embed_proj_dim=16,
                                    max_position_embeddings=32, dropout=0.5)
    return transformers.OPTForCausalLM(config)


def arguments(tmp_path, **kw):
    settings = dict(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4,
                    learning_rate=1e-2, logging_steps=1, report_to=[], save_strategy="no",
                    use_cpu=True, lr_scheduler_type="constant")
    return transformers.TrainingArguments(**{**settings, **kw})


def test_zo_trainer_takes_zo_steps_and_logs_queries(tmp_path):
    model = tiny_opt()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = ZOTrainer(model=model, args=arguments(tmp_path), train_dataset=Tokens())
    result = trainer.train()
    assert trainer.zo.steps == 3 and trainer.zo.queries == 3 * 3  # central, q = 1: f(x), +-mu
    assert trainer.zo.memory == "inference"
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())  # no backward, ever
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 3 and all("zo_queries" in h for h in logged)
    assert torch.isfinite(torch.tensor(result.training_loss))


def test_a_passed_optimizer_is_used_and_its_lr_scheduled(tmp_path):
    model = tiny_opt()
    opt = torchzo.ZOAdam(model.parameters(), lr=1e-2, q=2, seed=0, memory="inference")
    args = arguments(tmp_path, warmup_steps=0)
    args.lr_scheduler_type = "linear"
    trainer = ZOTrainer(model=model, args=args, train_dataset=Tokens(), optimizers=(opt, None))
    trainer.train()
    assert trainer.zo is opt and opt.steps == 3 and opt.queries == 3 * 3
    assert opt.param_groups[0]["lr"] < 1e-2  # the Trainer's linear decay set the real lr


def test_every_query_of_a_step_sees_the_model_without_dropout(tmp_path):
    model = tiny_opt()
    seen = []
    trainer = ZOTrainer(model=model, args=arguments(tmp_path, max_steps=1),
                        train_dataset=Tokens())
    model.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    trainer.train()
    assert seen and not any(seen)


def test_zo_trainer_refuses_gradient_accumulation_and_other_optimizers(tmp_path):
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        ZOTrainer(model=tiny_opt(), args=arguments(tmp_path, gradient_accumulation_steps=2),
                  train_dataset=Tokens())
    model = tiny_opt()
    with pytest.raises(TypeError, match="torchzo optimizer"):
        ZOTrainer(model=model, args=arguments(tmp_path), train_dataset=Tokens(),
                  optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None))


def test_a_run_resumed_from_a_trainer_checkpoint_takes_the_same_steps(tmp_path):
    straight = tiny_opt()
    ZOTrainer(model=straight, args=arguments(tmp_path / "a", max_steps=4),
              train_dataset=Tokens()).train()
    first = tiny_opt()
    ZOTrainer(model=first, args=arguments(tmp_path / "b", max_steps=4, save_strategy="steps",
                                          save_steps=2), train_dataset=Tokens()).train()
    resumed = tiny_opt()
    trainer = ZOTrainer(model=resumed, args=arguments(tmp_path / "b", max_steps=4),
                        train_dataset=Tokens())
    trainer.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-2"))
    assert trainer.zo.steps == 4
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
