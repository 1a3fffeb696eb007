"""The training loop: ``fit`` and ``load_or_train``; optimiser groups, schedule; resumable.

``fit`` trains any module whose ``forward(batch)`` returns an object with ``logits``,
``loss`` and ``terms`` (``FusionModel``'s ``ModelOutput``): AdamW with the encoder
parameters PEFT leaves trainable at ``optim.encoder_lr``, the heads at ``optim.head_lr``
and everything else at ``optim.lr``, linear warm-up then cosine decay per optimiser step, gradient accumulation,
bf16 autocast, gradient clipping, a validation metric per epoch and the best checkpoint
by the headline metric.

Reproducibility: every generator is seeded and checkpointed (``mmcore.checkpoint``), and
the training order comes from ``ResumableSampler`` (a permutation per ``seed + epoch``), so
a run interrupted at an optimiser step and resumed ends with the same weights and metrics
as one that was never interrupted (exactly, with ``num_workers=0``; with workers, random
augmentations are exact when resuming at epoch boundaries).

Interrupts: checkpoints are written atomically, so a crash or a hard kill at any point
leaves the previous ``last`` whole. The first SIGINT / SIGTERM lets the optimiser step under
way finish, saves ``last`` and raises ``TrainingInterrupted`` (resume=True continues from
there); a second one aborts at once.

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) ``fit`` joins the process group
(``mmcore.runtime``), wraps the model in DistributedDataParallel, and validates with
``mmcore.evaluation.evaluate``, which gathers every rank's logits, so metrics equal the
single-process ones. Only rank 0 writes the run folder and shows progress bars.

What a run leaves in its folder (``run.out_dir``), and how it is resumed from there:
``mmcore.run_folder``.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mmcore.choice_lists import ConfigError
from mmcore.config import Config, OptimConfig
from mmcore.evaluation import evaluate
from mmcore.metrics import metric_for
from mmcore.prompts import prompt_parameters
from mmcore.run_folder import (
    LAST,
    FitResult,
    Progress,
    finish_run,
    resume_run,
    save_best,
    save_last,
    start_run_dir,
    write_history,
)
from mmcore.runtime import (
    DistInfo,
    distributed_env,
    init_distributed,
    precision_context,
    resolve_device,
    seed_everything,
    start_epoch,
    wrap_ddp,
)
from mmcore.stop_signals import StopSignals, TrainingInterrupted

EvaluateFn = Callable[[nn.Module, DataLoader], dict[str, float]]


# --- optimisation ------------------------------------------------------------------------------


def param_groups(model: nn.Module, optim: OptimConfig) -> list[dict[str, Any]]:
    """AdamW groups: (encoder | heads | rest) x (decay | no decay), empty groups left out.

    Encoder parameters are the trainable ones under a top-level module whose name ends in
    "encoder" (``image_encoder``, ``text_encoder``), except read-only prompts; they train at
    ``optim.encoder_lr``. The classifier heads (top-level ``heads``) train at
    ``optim.head_lr``: they start at their closed-form fit, which a large step would undo.
    Everything else (prompts, predictors) trains at ``optim.lr``. Biases, norm weights
    (every parameter of fewer than 2 dimensions) and prompts get no weight decay.
    """
    prompts = {id(p) for p in prompt_parameters(model)}
    rates = {"encoder": optim.encoder_lr, "heads": optim.head_lr, "rest": optim.lr}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {
        (part, decay): [] for part in rates for decay in (True, False)}
    for part, p in _trainable_parts(model):
        groups[part, p.ndim >= 2 and id(p) not in prompts].append(p)
    return [{"name": f"{part}_{'decay' if decay else 'no_decay'}", "params": ps,
             "lr": rates[part], "weight_decay": optim.weight_decay if decay else 0.0}
            for (part, decay), ps in groups.items() if ps]


def _trainable_parts(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Each trainable parameter with its part: "encoder" (what PEFT trains, prompts aside),
    "heads" (top-level ``heads``) or "rest" (prompts, predictors)."""
    prompts = {id(p) for p in prompt_parameters(model)}
    parts = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            top = name.split(".", 1)[0]
            parts.append(("encoder" if top.endswith("encoder") and id(p) not in prompts
                          else "heads" if top == "heads" else "rest", p))
    return parts


def backward(out: Any, window: int, align_inputs: list[nn.Parameter] | None = None) -> None:
    """Back-propagate ``out.loss / window``; with ``align_inputs``, route the alignment to them.

    Routing (``loss.align_reaches_encoder=False``) takes two passes: the task loss to every
    parameter, then ``alpha * alignment`` to ``align_inputs`` (prompts and predictors) only,
    so the encoder weights PEFT trains learn from the task alone. Without it, the alignment
    also reaches them through the prompts, which read the encoder's tokens with its weights.
    """
    if align_inputs is None or not out.alignment.requires_grad:
        (out.loss / window).backward()
        return
    (out.task / window).backward(retain_graph=True)
    (out.alignment / window).backward(inputs=align_inputs)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based): linear
    warm-up to 1 over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# --- training ----------------------------------------------------------------------------------


@dataclass
class _Trainer:
    """One run's fixed parts: what ``fit`` sets up, shared by its epochs."""

    model: nn.Module  # unwrapped
    net: nn.Module  # what the forward pass runs: the model or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    cfg: Config
    info: DistInfo
    device: torch.device
    run_dir: Path
    stop: StopSignals
    align_inputs: list[nn.Parameter] | None  # where the alignment's gradient may go (None: all)

    def save_last(self, state: Progress) -> None:  # a collective: every rank takes part
        save_last(self.run_dir, self.model, self.optimizer, self.scheduler, state, self.cfg,
                  self.info, self.device)

    def train_epoch(self, loader: DataLoader, state: Progress) -> None:
        """Run (the rest of) epoch ``state.epoch``, stepping every ``grad_accum`` micro-batches."""
        optim, n_batches = self.cfg.optim, len(loader)
        ddp = isinstance(self.net, DistributedDataParallel)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.model.train()
        bar = tqdm(total=n_batches, initial=state.batches,
                   desc=f"epoch {state.epoch + 1}/{optim.epochs}",
                   disable=not (self.cfg.run.progress and self.info.is_main))
        sums, tic = state.sums, time.perf_counter()
        for i, batch in enumerate(start_epoch(loader, state.epoch, state.batches,
                                              self.cfg.run.seed, self.info.rank),
                                  start=state.batches):
            window = min(optim.grad_accum, n_batches - i // optim.grad_accum * optim.grad_accum)
            steps_now = (i + 1) % optim.grad_accum == 0 or i + 1 == n_batches
            if len(batch):
                with self.net.no_sync() if ddp and not steps_now else contextlib.nullcontext():
                    with precision_context(self.device, self.cfg.run.precision):
                        out = self.net(batch.to(self.device))
                    backward(out, window, self.align_inputs)  # the window's mean
                for key, value in {"loss": float(out.loss.detach()), **out.terms,
                                   "batches": 1, "samples": len(batch)}.items():
                    sums[key] = sums.get(key, 0.0) + value
            elif ddp:
                raise RuntimeError("an empty batch (every row skipped by data.bad_sample_policy="
                                   "'skip') would stall the other processes; use 'missing'")
            bar.update(1)
            if not steps_now:
                continue
            if optim.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(trainable, optim.clip_grad)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            state.step, state.batches = state.step + 1, i + 1
            sums["time_s"] = sums.get("time_s", 0.0) + time.perf_counter() - tic
            tic = time.perf_counter()
            if sums.get("batches"):
                bar.set_postfix(loss=f"{sums['loss'] / sums['batches']:.4f}", samples_s=(
                    f"{sums['samples'] * self.info.world_size / sums['time_s']:.1f}"))
            every = self.cfg.run.checkpoint_every
            signum = self.stop.requested()
            if signum or (every and state.step % every == 0 and i + 1 < n_batches):
                self.save_last(state)
            if signum:
                bar.close()
                raise TrainingInterrupted(signum, self.run_dir / LAST, state.step)
        bar.close()

    def epoch_row(self, state: Progress) -> dict[str, float]:
        """The epoch's training means over every rank, learning rates and speed."""
        keys = sorted(k for k in state.sums if k != "time_s")
        comm = self.device if self.info.world_size > 1 and dist.get_backend() == "nccl" else "cpu"
        totals = torch.tensor([state.sums[k] for k in keys], dtype=torch.float64, device=comm)
        if self.info.world_size > 1:
            dist.all_reduce(totals)
        sums = dict(zip(keys, totals.tolist()))
        batches, samples = sums.pop("batches", 0.0), sums.pop("samples", 0.0)
        seconds = state.sums.get("time_s", 0.0)
        return {"epoch": state.epoch + 1, "step": state.step,
                **{f"train_{k}": v / max(batches, 1.0) for k, v in sums.items()},
                **{f"lr_{g['name']}": g["lr"] for g in self.optimizer.param_groups},
                "samples": samples, "time_s": seconds,
                "samples_per_s": samples / seconds if seconds else float("nan")}


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    cfg: Config,
    run_dir: str | Path | None = None,
    evaluate_fn: EvaluateFn | None = None,
    resume: bool = False,
    on_run_dir: Callable[[Path], None] | None = None,
) -> FitResult:
    """Train ``model``, validating each epoch and keeping the best checkpoint.

    Args:
        model: ``forward(batch)`` returns ``.logits``, ``.loss`` (the training loss) and
            ``.terms`` (a dict of floats to log); ``model.task_type`` or the validation
            dataset's ``task_type`` picks the metrics. Seed before building it.
        train_loader: training batches; ``build_loader`` makes one that is seeded,
            resumable mid-epoch and split over processes.
        val_loader: validation batches, or None (no best checkpoint: the last one is kept).
        cfg: ``optim`` and ``run`` are used; all of it is saved, and checked on resume.
        run_dir: the run folder (default ``run.out_dir``).
        evaluate_fn: ``(model, val_loader) -> metrics`` in place of ``evaluate``; its
            first key is the headline (higher is better).
        resume: continue the run saved in ``run_dir`` (or just load it, if it finished);
            start afresh when there is none. False refuses a folder that holds a run.
        on_run_dir: called once with the new run folder on rank 0 (e.g. to save the
            missing tables there).

    Returns:
        ``FitResult``; ``model`` ends with the best checkpoint's weights.

    Raises:
        FileExistsError: ``resume=False`` and ``run_dir`` holds a run.
        CheckpointError: resuming a run of another config, model or process count.
    """
    run_dir = Path(run_dir or cfg.run.out_dir)
    device = resolve_device(cfg.run.device, distributed_env().local_rank)
    info = init_distributed(device)
    task_type = getattr(model, "task_type", None) or getattr(
        getattr(val_loader, "dataset", None), "task_type", None)
    if val_loader is not None and evaluate_fn is None and task_type is None:
        raise ValueError("fit cannot tell the task type: give the model or the validation "
                         "dataset a task_type attribute, or pass evaluate_fn")
    align_inputs = _align_inputs(model, cfg, info)  # refused before the run folder is made
    seed_everything(cfg.run.seed + info.rank)
    model.to(device)
    optim = cfg.optim
    optimizer = torch.optim.AdamW(param_groups(model, optim), lr=optim.lr,
                                  weight_decay=optim.weight_decay)
    total = math.ceil(len(train_loader) / optim.grad_accum) * optim.epochs
    scheduler = LambdaLR(optimizer, partial(lr_factor, total=total,
                                            warmup=round(optim.warmup_ratio * total)))
    state = Progress(metric=metric_for(task_type).name if evaluate_fn is None and task_type
                      else "")
    if (run_dir / LAST).exists():
        state = resume_run(run_dir, cfg, info, model, optimizer, scheduler, resume)
    elif info.is_main:
        start_run_dir(run_dir, cfg, device, info, on_run_dir)

    def validate(row: dict[str, float]) -> None:
        """Score the model on validation into ``row``; keep it as ``best`` if it is."""
        if val_loader is None:
            return
        show = cfg.run.progress and info.is_main
        scores = (evaluate_fn(model, val_loader) if evaluate_fn is not None
                  else evaluate(model, val_loader, task_type, cfg.run.precision, show)[0])
        state.metric = state.metric or next(iter(scores))
        row.update({f"val_{k}": v for k, v in scores.items()})
        if state.improves(scores[state.metric]):
            state.best_value, state.best_epoch = scores[state.metric], row["epoch"]
            if info.is_main:
                save_best(run_dir, model, cfg, row["epoch"], scores)

    with StopSignals(info, device) as stop:
        trainer = _Trainer(model, wrap_ddp(model, device, info), optimizer, scheduler, cfg,
                           info, device, run_dir, stop, align_inputs)
        _run_epochs(trainer, train_loader, state, validate)
    return finish_run(model, run_dir, state, cfg, info)


def _align_inputs(model: nn.Module, cfg: Config, info: DistInfo) -> list[nn.Parameter] | None:
    """The parameters the alignment may train under ``loss.align_reaches_encoder=False``."""
    if cfg.loss.align_reaches_encoder:
        return None
    if info.world_size > 1:  # DDP reduces each gradient once per backward pass, not twice
        raise ConfigError("loss.align_reaches_encoder=False takes two backward passes a step, "
                          "which DistributedDataParallel does not support; train in one process")
    return [p for part, p in _trainable_parts(model) if part == "rest"]


def _run_epochs(trainer: _Trainer, train_loader: DataLoader, state: Progress,
                validate: Callable[[dict[str, float]], None]) -> None:
    """Epoch 0 (the model as built) if not done yet, then the remaining epochs; each one is
    validated, logged to ``metrics.jsonl`` and saved as ``last``."""
    run_dir, info, epochs = trainer.run_dir, trainer.info, trainer.cfg.optim.epochs
    if not state.history:  # epoch 0: the model as built (closed-form fits, if any)
        start = {"epoch": 0, "step": 0}
        validate(start)
        state.history.append(start)
        write_history(run_dir, state, info)
        trainer.save_last(state)
    while state.epoch < epochs:
        trainer.train_epoch(train_loader, state)
        row = trainer.epoch_row(state)
        validate(row)
        state.history.append(row)
        state.epoch, state.batches, state.sums = state.epoch + 1, 0, {}
        write_history(run_dir, state, info)  # before `last`: a kill in between redoes
        trainer.save_last(state)  # the epoch
        if state.epoch < epochs and (signum := trainer.stop.requested()):
            raise TrainingInterrupted(signum, run_dir / LAST, state.step)  # saved above


def load_or_train(
    cfg: Config,
    build: Callable[[Config], tuple[nn.Module, DataLoader, DataLoader | None]],
    run_dir: str | Path | None = None,
    evaluate_fn: EvaluateFn | None = None,
    on_run_dir: Callable[[Path], None] | None = None,
) -> tuple[nn.Module, FitResult]:
    """Load the run in ``run_dir`` if it finished with this config, else train (or resume) it.

    A reader re-running a notebook gets the trained model back without retraining; a run
    saved with another config is an error naming the changed keys, never overwritten.

    Args:
        cfg: the run's configuration.
        build: ``cfg -> (model, train_loader, val_loader)``; called first (seed set to
            ``run.seed``), so the frozen pretrained weights come from their source.
        run_dir: the run folder (default ``run.out_dir``).
        evaluate_fn: as in ``fit``.
        on_run_dir: as in ``fit``.

    Returns:
        The model with its best weights, and the run's ``FitResult``.
    """
    seed_everything(cfg.run.seed)
    model, train_loader, val_loader = build(cfg)
    result = fit(model, train_loader, val_loader, cfg, run_dir, evaluate_fn, resume=True,
                 on_run_dir=on_run_dir)
    return model, result


__all__ = [
    "TrainingInterrupted",
    "fit",
    "load_or_train",
    "lr_factor",
    "param_groups",
]
