"""Time one training step of the offline model, fp32 against bf16 autocast; count parameters.

One step = forward + backward + AdamW step of ``build_model`` (offline preset, BitFit) on a
synthetic complete batch: 224 px images, 64 text tokens. A few warm-up steps, then the
median of several timed ones. Both precisions run in the same process with their steps
interleaved, so their ratio survives a busy machine better than either time alone.

    .venv/bin/python benchmarks/step_time.py [--batch-size 32] [--steps 5] [--warmup 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mmcore.config import Config
from mmcore.data.base import Batch
from mmcore.model import build_model, parameter_report, precision_context

NUM_CLASSES = 10
PEFT_MODES = ("bitfit", "frozen", "layernorm", "full", "lora")
PARTS = ("image_encoder", "text_encoder", "prompts", "predictors", "heads", "all")


def synthetic_batch(batch_size: int, image_size: int, text_tokens: int) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(
        index=torch.arange(batch_size),
        pixel_values=torch.randn(batch_size, 3, image_size, image_size, generator=g),
        input_ids=torch.randint(1000, 2000, (batch_size, text_tokens), generator=g),
        attention_mask=torch.ones(batch_size, text_tokens, dtype=torch.long),
        has_image=torch.ones(batch_size, dtype=torch.bool),
        has_text=torch.ones(batch_size, dtype=torch.bool),
        labels=torch.randint(0, NUM_CLASSES, (batch_size,), generator=g),
    )


class Trainer:
    """One model and its AdamW optimiser, stepping under a fixed precision."""

    def __init__(self, cfg: Config, precision: str) -> None:
        torch.manual_seed(0)
        self.model = build_model(cfg, NUM_CLASSES, "multiclass").train()
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=1e-4)
        self.precision = precision

    def step(self, batch: Batch) -> float:
        """Seconds for one forward + backward + AdamW step."""
        start = time.perf_counter()
        with precision_context("cpu", self.precision):
            out = self.model(batch)
        out.loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


def print_step_table(args: argparse.Namespace) -> None:
    cfg = Config.from_params(preset="offline", peft="bitfit", max_text_length=args.text_tokens)
    batch = synthetic_batch(args.batch_size, cfg.model.image_size, args.text_tokens)
    trainers = [Trainer(cfg, precision) for precision in ("fp32", "bf16")]
    times: dict[str, list[float]] = {t.precision: [] for t in trainers}
    for i in range(args.warmup + args.steps):  # interleaved: both precisions see the same load
        for trainer in trainers:
            seconds = trainer.step(batch)
            if i >= args.warmup:
                times[trainer.precision].append(seconds)
    print(f"training step, offline preset, bitfit, batch {args.batch_size}, "
          f"{cfg.model.image_size} px, {args.text_tokens} tokens, {torch.get_num_threads()} "
          f"threads; median of {args.steps} interleaved steps after {args.warmup} warm-up")
    print(f"{'precision':<10}{'s/step':>10}{'samples/s':>12}{'vs fp32':>10}")
    base = statistics.median(times["fp32"])
    for precision, observed in times.items():
        seconds = statistics.median(observed)
        print(f"{precision:<10}{seconds:>10.2f}{args.batch_size / seconds:>12.1f}"
              f"{base / seconds:>9.2f}x")


def print_parameter_tables() -> None:
    for preset, pretrained in (("offline", True), ("paper", False)):
        print(f"\nparameters (trainable / total), preset={preset}, pretrained={pretrained}")
        print(f"{'peft':<10}" + "".join(f"{part:>26}" for part in PARTS))
        for mode in PEFT_MODES:
            cfg = Config.from_params(preset=preset, pretrained=pretrained, peft=mode)
            report = parameter_report(build_model(cfg, NUM_CLASSES, "multiclass"))
            print(f"{mode:<10}" + "".join(f"{f'{t:,} / {n:,}':>26}"
                                           for t, n in (report[p] for p in PARTS)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--skip-timing", action="store_true", help="only count parameters")
    args = parser.parse_args()
    if not args.skip_timing:
        print_step_table(args)
    print_parameter_tables()


if __name__ == "__main__":
    main()
