"""The training engine on a toy model: schedule, groups, run folder, exact resume, checkpoints."""
from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from _toy import ToyData, ToyModel
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from mmcore.checkpoint import (
    CheckpointError,
    atomic_write,
    load_checkpoint,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from mmcore.choice_lists import ConfigError
from mmcore.config import Config, LossConfig
from mmcore.metrics import compute_metrics
from mmcore.evaluation import evaluate
from mmcore.runtime import DistInfo, build_loader, has_fast_bf16, seed_everything
from mmcore.train import _align_inputs, backward, fit, load_or_train, lr_factor, param_groups

TIMING = ("time_s", "samples_per_s")  # the only fields that may differ between equal runs


def _cfg(**params) -> Config:
    base = dict(epochs=3, batch_size=8, eval_batch_size=16, lr=1e-2, encoder_lr=1e-3,
                head_lr=1e-2, precision="fp32", progress=False, warmup_ratio=0.2, seed=3)
    return Config.from_params(**{**base, **params})


class CrashingModel(ToyModel):
    """Raises on the ``crash_at``-th training forward: a run killed mid-training."""

    def __init__(self, crash_at: int, dropout: float = 0.0) -> None:
        super().__init__(dropout)
        self.crash_at, self.calls = crash_at, 0

    def forward(self, batch):
        if self.training:
            self.calls += 1
            if self.calls == self.crash_at:
                raise KeyboardInterrupt("simulated crash")
        return super().forward(batch)


def _build(cfg: Config, model_cls=ToyModel, **kwargs):
    seed_everything(cfg.run.seed)
    model = model_cls(**kwargs)
    train, val = ToyData(64, seed=0), ToyData(31, seed=1)
    return (model, build_loader(train, cfg.optim.batch_size, train.collate, train=True,
                                seed=cfg.run.seed),
            build_loader(val, cfg.run.eval_batch_size, val.collate, train=False))


def _run(cfg: Config, run_dir: Path, model_cls=ToyModel, resume: bool = False, **kwargs):
    model, train, val = _build(cfg, model_cls, **kwargs)
    return model, fit(model, train, val, cfg, run_dir, resume=resume)


def _strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


def _assert_same_checkpoint(a: Path, b: Path) -> None:
    (ta, ma), (tb, mb) = read_checkpoint(a), read_checkpoint(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key
    assert _strip(ma["progress"]["history"]) == _strip(mb["progress"]["history"])
    assert ma["scheduler"] == mb["scheduler"]


# --- schedule and parameter groups --------------------------------------------------------------


def test_lr_factor_warms_up_linearly_then_decays_by_cosine():
    total, warmup = 20, 4
    factors = [lr_factor(s, total, warmup) for s in range(total)]
    assert factors[:warmup] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_factor(warmup, total, warmup) == pytest.approx(1.0)
    assert all(a > b for a, b in zip(factors[warmup:], factors[warmup + 1:]))
    mid = warmup + (total - warmup) // 2
    assert lr_factor(mid, total, warmup) == pytest.approx(0.5)
    assert lr_factor(total, total, warmup) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0, total, 0) == pytest.approx(1.0)  # no warm-up


def test_param_groups_split_encoder_lr_and_weight_decay():
    model, o = ToyModel(), _cfg(weight_decay=0.05, head_lr=5e-3).optim
    groups = {g["name"]: g for g in param_groups(model, o)}
    names = {id(p): n for n, p in model.named_parameters()}
    members = {k: {names[id(p)] for p in g["params"]} for k, g in groups.items()}
    assert members["encoder_decay"] == {"image_encoder.proj.weight", "text_encoder.proj.weight",
                                        "text_encoder.embed.weight"}
    assert "image_encoder.norm.weight" in members["encoder_no_decay"]
    assert "image_encoder.proj.bias" in members["encoder_no_decay"]
    prompts = {"image_encoder.prompts.tokens", "text_encoder.prompts.tokens"}
    assert prompts <= members["rest_no_decay"]  # prompts: optim.lr, no decay
    assert members["heads_decay"] == {"heads.image.weight", "heads.text.weight"}
    assert members["heads_no_decay"] == {"heads.image.bias", "heads.text.bias"}
    assert groups["encoder_decay"]["lr"] == o.encoder_lr and groups["rest_no_decay"]["lr"] == o.lr
    assert groups["heads_decay"]["lr"] == groups["heads_no_decay"]["lr"] == 5e-3 != o.lr
    assert groups["rest_no_decay"]["weight_decay"] == 0.0
    assert groups["encoder_decay"]["weight_decay"] == 0.05
    trained = set().union(*members.values())
    assert trained == {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("frozen.") for n in trained)


# --- fit ----------------------------------------------------------------------------------------


def test_fit_writes_the_run_folder_and_keeps_the_best_weights(tmp_path):
    cfg = _cfg()
    saved = []
    model, train, val = _build(cfg)
    result = fit(model, train, val, cfg, tmp_path, on_run_dir=saved.append)
    assert saved == [tmp_path]
    assert Config.from_yaml(tmp_path / "config.yaml") == cfg
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["seed"] == 3 and env["torch"] == torch.__version__ and env["threads"] >= 1
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3] and rows == result.history
    assert rows[0]["step"] == 0 and "train_loss" not in rows[0]  # the model as built
    assert rows[-1]["step"] == 3 * 8  # 64 samples / batch 8, every epoch
    scores = [r["val_accuracy"] for r in rows]
    assert result.metric == "accuracy" and result.best_value == max(scores)
    assert result.best_epoch == scores.index(max(scores))
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["best_epoch"] == result.best_epoch and final["steps"] == 24
    # the model holds the best checkpoint's weights, and they score as recorded
    tensors, meta = read_checkpoint(tmp_path / "checkpoints/best.safetensors")
    assert meta["epoch"] == result.best_epoch
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, tensors[f"model.{name}"])
    assert evaluate(model, val, "multiclass")[0]["accuracy"] == result.best_value


def test_fit_learns_the_toy_task(tmp_path):
    result = _run(_cfg(epochs=6, warmup_ratio=0.0, lr=3e-2, head_lr=3e-2), tmp_path)[1]
    losses = [r["train_loss"] for r in result.history[1:]]
    assert losses[-1] < 0.8 * losses[0]


def test_grad_accum_matches_one_large_batch(tmp_path):
    """Two micro-batches of 4 accumulate to the gradient of one batch of 8."""
    one = _run(_cfg(epochs=1), tmp_path / "one")[0]
    two = _run(_cfg(epochs=1, batch_size=4, grad_accum=2), tmp_path / "two")[0]
    for (name, a), b in zip(one.named_parameters(), two.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_changes_the_numerics_where_the_hardware_has_it_and_stays_finite(tmp_path):
    fp32 = _run(_cfg(epochs=1), tmp_path / "fp32")[0]
    bf16, result = _run(_cfg(epochs=1, precision="bf16"), tmp_path / "bf16")
    assert math.isfinite(result.history[1]["train_loss"])
    diff = max((a - b).abs().max().item() for a, b in zip(fp32.parameters(), bf16.parameters()))
    if has_fast_bf16("cpu"):
        assert diff > 1e-5  # autocast was on: bf16 matmuls round differently from fp32
    else:
        assert diff == 0  # no bf16 units: the run computed in float32


# --- resume -------------------------------------------------------------------------------------


@pytest.mark.parametrize("crash_at, params", [
    (8 + 3, {}),  # during epoch 2: resumes from the end of epoch 1
    (16 + 7, {"checkpoint_every": 1, "grad_accum": 2, "batch_size": 4}),  # mid-epoch resume
])
def test_resume_after_a_crash_is_bit_exact(tmp_path, crash_at, params):
    cfg = _cfg(**params)
    full_model, full = _run(cfg, tmp_path / "full", dropout=0.2)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, tmp_path / "cut", CrashingModel, crash_at=crash_at, dropout=0.2)
    _, meta = read_checkpoint(tmp_path / "cut/checkpoints/last.safetensors", with_tensors=False)
    assert not meta["finished"] and meta["progress"]["step"] > 0
    model, resumed = _run(cfg, tmp_path / "cut", resume=True, dropout=0.2)
    _assert_same_checkpoint(tmp_path / "full/checkpoints/last.safetensors",
                            tmp_path / "cut/checkpoints/last.safetensors")
    for a, b in zip(full_model.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert _strip(resumed.history) == _strip(full.history)
    assert (resumed.best_epoch, resumed.best_value) == (full.best_epoch, full.best_value)


def test_resume_refuses_a_changed_config_and_fresh_fit_refuses_a_used_folder(tmp_path):
    _run(_cfg(epochs=1), tmp_path)
    with pytest.raises(CheckpointError, match=r"lr: 0.01 -> 0.02"):
        _run(_cfg(epochs=1, lr=2e-2), tmp_path, resume=True)
    with pytest.raises(FileExistsError, match="resume=True"):
        _run(_cfg(epochs=1), tmp_path)
    _run(_cfg(epochs=1, progress=True, num_workers=0), tmp_path, resume=True)  # harmless keys


def test_load_or_train_loads_a_finished_run_without_training(tmp_path):
    cfg = _cfg(epochs=2, out_dir=str(tmp_path))
    trained, first = load_or_train(cfg, _build)

    def build_untrainable(cfg):
        model, train, val = _build(cfg, CrashingModel, crash_at=1)  # any training step raises
        return model, train, val

    loaded, second = load_or_train(cfg, build_untrainable)
    assert _strip(second.history) == _strip(first.history)
    for a, b in zip(trained.parameters(), loaded.parameters()):
        assert torch.equal(a, b)


# --- evaluate -----------------------------------------------------------------------------------


def test_evaluate_orders_rows_by_index_and_drops_repeats():
    seed_everything(0)
    model, data = ToyModel().eval(), ToyData(13, seed=2)
    order = [5, 3, 12, 3, 0, 1, 2, 4, 6, 7, 8, 9, 10, 11, 5]  # shuffled, 3 and 5 repeated
    loader = DataLoader(data, batch_size=4, sampler=order, collate_fn=data.collate)
    metrics, logits, labels = evaluate(model, loader, "multiclass")
    with torch.no_grad():
        expected = model(data.collate(list(range(13)))).logits
    torch.testing.assert_close(logits, expected)
    assert torch.equal(labels, data.labels)
    assert metrics == compute_metrics(expected, data.labels, "multiclass")
    assert model.training is False


def test_fit_needs_a_task_type(tmp_path):
    model, train, val = _build(_cfg())
    model.task_type = None
    val.dataset.task_type = None
    with pytest.raises(ValueError, match="task type"):
        fit(model, train, val, _cfg(), tmp_path)


def test_build_loader_splits_the_global_batch_over_processes(monkeypatch):
    data = ToyData(10)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    loader = build_loader(data, 4, data.collate, train=False)
    assert loader.batch_size == 2
    assert [int(i) for b in loader for i in b.index] == [1, 3, 5, 7, 9]
    with pytest.raises(ValueError, match="optim.batch_size"):
        build_loader(data, 3, data.collate, train=True)


# --- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_stores_only_trainable_weights_and_round_trips(tmp_path):
    seed_everything(0)
    model = ToyModel()
    path = save_checkpoint(tmp_path / "c.safetensors", model, {"note": [1, 2]})
    tensors, meta = read_checkpoint(path)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {k.removeprefix("model.") for k in tensors} == trainable
    assert meta["note"] == [1, 2]
    seed_everything(1)
    other = ToyModel()
    frozen = other.frozen.weight.clone()
    load_checkpoint(path, other)
    assert torch.equal(other.heads["text"].weight, model.heads["text"].weight)
    assert torch.equal(other.frozen.weight, frozen)  # frozen weights come from their source


def test_checkpoint_refuses_pickles_and_foreign_files(tmp_path):
    model = ToyModel()
    for name in ("model.pt", "model.pkl", "model.bin"):
        (tmp_path / name).write_bytes(b"not read")
        with pytest.raises(CheckpointError, match="pickle"):
            load_checkpoint(tmp_path / name, model)
    save_file({"x": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="not an mmcore checkpoint"):
        load_checkpoint(tmp_path / "plain.safetensors", model)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_checkpoint(tmp_path / "junk.safetensors", model)


def test_checkpoint_refuses_a_different_architecture(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", ToyModel(), {})
    wider = ToyModel()
    wider.heads["text"] = torch.nn.Linear(8, 5)
    with pytest.raises(CheckpointError, match=r"heads\.text\.weight"):
        load_checkpoint(path, wider)
    unfrozen = ToyModel()
    unfrozen.frozen.requires_grad_(True)  # another PEFT mode: same shapes, other trainables
    with pytest.raises(CheckpointError, match=r"frozen\.weight"):
        load_checkpoint(path, unfrozen)


def test_rng_state_round_trips_every_generator():
    seed_everything(5)
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state
    states = rng_state()
    draws = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(),
             np.random.randn(), torch.rand(3).tolist())
    set_rng_state(states)
    again = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(),
             np.random.randn(), torch.rand(3).tolist())
    assert again == draws


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = atomic_write(tmp_path / "f.json", b"old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old"


def _gradients(route: bool, task_only: bool = False) -> dict[str, torch.Tensor]:
    from test_model import make_batch, make_model

    model = make_model(seed=3, loss_cfg=LossConfig(alignment="mse", alpha=1.0))
    out = model(make_batch([True] * 6, [True] * 6))
    if task_only:
        out.task.backward()
    else:
        align_inputs = [model.image_encoder.prompt, model.text_encoder.prompt,
                        *model.predictors.parameters()]
        backward(out, 1, align_inputs if route else None)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_routed_backward_keeps_the_alignment_off_the_encoder_weights():
    full, routed, task = _gradients(False), _gradients(True), _gradients(False, task_only=True)
    bias = "text_encoder.bias"  # reaches the alignment through the text prompts (the source)
    assert not torch.allclose(full[bias], task[bias])
    torch.testing.assert_close(routed[bias], task[bias])
    for name in ("text_encoder.prompt", "image_encoder.prompt", "predictors.text_to_image"):
        names = [n for n in full if n.startswith(name)]
        assert names and all(torch.allclose(routed[n], full[n]) for n in names), name


def test_routing_needs_one_process_and_trainable_encoder_weights():
    model = ToyModel()
    cfg = Config.from_params(peft="bitfit", align_reaches_encoder=False)
    inputs = {id(p) for p in _align_inputs(model, cfg, DistInfo())}
    prompts = {id(p) for p in model.image_encoder.prompts.parameters()}
    assert prompts <= inputs and id(model.image_encoder.proj.bias) not in inputs
    assert _align_inputs(model, Config(), DistInfo()) is None  # the default: no routing
    with pytest.raises(ConfigError, match="DistributedDataParallel"):
        _align_inputs(model, cfg, DistInfo(world_size=2))
