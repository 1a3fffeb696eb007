"""Speed of mmcore on this machine: one table per run, every figure a same-process ratio.

For each preset the model is built twice with identical weights: ``plain`` (fp32, eager:
the reference) and ``fast`` (the configuration's own speed settings: ``run.precision``,
``run.compile``). Their steps are interleaved, so the ratios survive a busy machine. Columns:

- training and evaluation samples/s, fast and plain, and their ratio;
- peak tensor memory of a training step, fast and plain, and their ratio;
- model FLOPs per sample (training step and evaluation forward, counted);
- the fp32 and bf16 matrix-product peaks measured in this process (2048^3, ``--threads`` threads;
  bf16 only on a CPU with bf16 units, AVX-512 or AMX: elsewhere ``run.precision="bf16"``
  computes in float32, and ``precision`` says so) and the fraction of the peak of its
  precision that the fast training step reaches;
- the one-pass sweep (``mmcore.evaluation``: collect once, score 11 rates x 3 types x 3 seeds)
  against one evaluation pass over the same split (offline preset, real clip-art data);
- the data pipeline alone (decode, transform, tokenise through ``mmcore.data.Collator``)
  against what the fast training step consumes, and the mean padded text length of its
  batches (dynamic padding: the longest text of each batch, not ``max_text_length``);
- trainable and total parameters (PEFT mode of the configuration, BitFit by default);
- ``cache.{md,json}``: the same training step with BitFit, with frozen encoders run in
  full, and with frozen encoders from the token cache (prompts only; timed over an epoch of
  shuffled batches that the collator gathers from the cache), at 112 and 224 px, with the
  cache's build time and size per sample;
- ``compile.{md,json}``: the BitFit training step (bf16) eager against ``torch.compile`` of
  the encoders (``run.compile``), identical weights, interleaved: samples/s, the first
  compiled step's wall time (compilation), the fraction of the bf16 peak each reaches, and
  the largest difference of their losses and logits on the same batch.

Top-10 operators by self CPU time of a training step (plain and fast) and the SDPA kernels
each encoder takes are saved beside the table.

    .venv/bin/python benchmarks/run.py            # full suite -> benchmarks/results/
    .venv/bin/python benchmarks/run.py --quick    # smoke run, under a minute
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import (Step, attention_kernels, count_flops, interleaved,  # noqa: E402
                     matmul, peak_memory, seconds, top_ops)

from mmcore.build import (build_collator, build_model, compile_encoders,  # noqa: E402
                          parameter_report)
from mmcore.config import Config  # noqa: E402
from mmcore.data import load_dataset  # noqa: E402
from mmcore.data.base import Batch  # noqa: E402
from mmcore.evaluation import collect, sweep  # noqa: E402
from mmcore.metrics import compute_metrics  # noqa: E402
from mmcore.model import FusionModel  # noqa: E402
from mmcore.runtime import (effective_precision, has_fast_bf16,  # noqa: E402
                            precision_context)

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = (
    "preset", "pretrained", "batch_size", "image_size", "text_tokens", "precision", "compile",
    "trainable_params", "total_params",
    "train_sps", "train_sps_plain", "train_speedup",
    "eval_sps", "eval_sps_plain", "eval_speedup",
    "peak_mem_mib", "peak_mem_plain_mib", "peak_mem_ratio",
    "train_gflop_per_sample", "eval_gflop_per_sample",
    "fp32_peak_gflops", "bf16_peak_gflops", "train_gflops", "peak_fraction",
    "eval_pass_s", "sweep_s", "sweep_ratio",
    "data_sps", "data_ratio", "data_mean_tokens",
)


@dataclass
class Setting:
    """One row of the table: a preset at a batch size, resolution and text length."""

    preset: str
    pretrained: bool
    batch_size: int
    image_size: int
    text_tokens: int

    def config(self, base: Config) -> Config:
        return base.replace(preset=self.preset, pretrained=self.pretrained,
                            image_size=self.image_size, max_text_length=self.text_tokens,
                            batch_size=self.batch_size)


class Runner:
    """A model, its AdamW optimiser and the precision its steps run under."""

    def __init__(self, model: FusionModel, precision: str) -> None:
        self.model = model
        self.precision = effective_precision("cpu", precision)  # what its steps compute in
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def train_step(self, batch: Batch) -> None:
        """Forward + backward + AdamW step."""
        self.model.train()
        with precision_context("cpu", self.precision):
            out = self.model(batch)
        out.loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def eval_step(self, batch: Batch) -> torch.Tensor:
        """One evaluation forward: fused logits."""
        self.model.eval()
        with precision_context("cpu", self.precision):
            return self.model(batch).logits


PEAK_FLOPS = 2.0 * 2048**3


def peak_products() -> dict[str, Step]:
    """The 2048^3 matrix products whose speed is the host's peak: ``matmul_fp32``, and
    ``matmul_bf16`` where the CPU has bf16 units (emulated bf16 runs near 1 GFLOP/s: no peak
    a step computes at, since ``run.precision="bf16"`` computes in float32 there)."""
    dtypes = {"fp32": torch.float32} | ({"bf16": torch.bfloat16} if has_fast_bf16("cpu") else {})
    return {f"matmul_{name}": matmul(2048, dtype)[0] for name, dtype in dtypes.items()}


def synthetic_batch(batch_size: int, image_size: int, text_tokens: int, num_classes: int
                    ) -> Batch:
    """A complete batch (every row has both modalities) of random pixels and word pieces."""
    g = torch.Generator().manual_seed(0)
    return Batch(
        index=torch.arange(batch_size),
        pixel_values=torch.randn(batch_size, 3, image_size, image_size, generator=g),
        input_ids=torch.randint(1000, 2000, (batch_size, text_tokens), generator=g),
        attention_mask=torch.ones(batch_size, text_tokens, dtype=torch.long),
        has_image=torch.ones(batch_size, dtype=torch.bool),
        has_text=torch.ones(batch_size, dtype=torch.bool),
        labels=torch.randint(0, num_classes, (batch_size,), generator=g),
    )


def build_runners(cfg: Config, num_classes: int) -> dict[str, Runner]:
    """``plain`` (fp32 eager) and ``fast`` (cfg's precision and compile), identical weights."""
    torch.manual_seed(0)
    plain = build_model(cfg.replace(compile=False), num_classes, "multiclass")
    fast = copy.deepcopy(plain)
    if cfg.run.compile:
        compile_encoders(fast)
    return {"plain": Runner(plain, "fp32"), "fast": Runner(fast, cfg.run.precision)}


# --- sections -----------------------------------------------------------------------------


def model_section(cfg: Config, num_classes: int, args: argparse.Namespace, tag: str
                  ) -> tuple[dict[str, Any], Runner]:
    """Training / evaluation speed, peak memory, FLOPs and peak fraction of one setting."""
    runners = build_runners(cfg, num_classes)
    batch = synthetic_batch(cfg.optim.batch_size, cfg.model.image_size, cfg.data.max_text_length,
                            num_classes)
    n = len(batch)
    peaks = peak_products()
    # one warm-up round each: lazy initialisation, oneDNN primitive creation, compilation
    train = interleaved({k: (lambda r=r: r.train_step(batch)) for k, r in runners.items()}
                        | peaks, repeats=args.steps, warmup=args.warmup)
    evals = interleaved({k: (lambda r=r: r.eval_step(batch)) for k, r in runners.items()},
                        repeats=args.steps, warmup=1)
    memory = {k: peak_memory(lambda r=r: r.train_step(batch)) for k, r in runners.items()}
    plain = runners["plain"]
    train_flops = count_flops(lambda: plain.train_step(batch)) / n
    # the evaluation forward with autograd on: the counter's module hooks fail under no_grad
    eval_flops = count_flops(lambda: plain.model.eval()(batch)) / n
    for name, runner in runners.items():
        table = top_ops(lambda r=runner: r.train_step(batch), rows=10)
        (args.out / f"profile_{tag}_{name}.txt").write_text(
            f"top-10 ops by self CPU time, one training step, {tag}, {name} "
            f"(precision={runner.precision}, compile={name == 'fast' and cfg.run.compile})\n"
            f"{table}\n")
    kernels = {f"{name}/{mode}": attention_kernels(
        (lambda r=runner: r.train_step(batch)) if mode == "train" else
        (lambda r=runner: r.eval_step(batch))) for name, runner in runners.items()
        for mode in ("train", "eval")}
    (args.out / f"attention_{tag}.json").write_text(json.dumps(kernels, indent=2) + "\n")
    peak = PEAK_FLOPS / train[f"matmul_{runners['fast'].precision}"]
    trainable, total = parameter_report(plain.model)["all"]
    return {
        "trainable_params": trainable, "total_params": total,
        "train_sps": n / train["fast"], "train_sps_plain": n / train["plain"],
        "train_speedup": train["plain"] / train["fast"],
        "eval_sps": n / evals["fast"], "eval_sps_plain": n / evals["plain"],
        "eval_speedup": evals["plain"] / evals["fast"],
        "peak_mem_mib": memory["fast"] / 2**20, "peak_mem_plain_mib": memory["plain"] / 2**20,
        "peak_mem_ratio": memory["fast"] / max(memory["plain"], 1),
        "train_gflop_per_sample": train_flops / 1e9, "eval_gflop_per_sample": eval_flops / 1e9,
        "fp32_peak_gflops": PEAK_FLOPS / train["matmul_fp32"] / 1e9,
        "bf16_peak_gflops": PEAK_FLOPS / train["matmul_bf16"] / 1e9 if "matmul_bf16" in train
        else None,
        "train_gflops": train_flops * n / train["fast"] / 1e9,
        "peak_fraction": train_flops * n / train["fast"] / peak,
    }, runners["fast"]


def clipart_loader(cfg: Config, split: str, train: bool, limit: int, batch_size: int
                   ) -> DataLoader:
    """The real clip-art split through the real Collator (no simulated missingness)."""
    dataset = load_dataset(cfg.replace(limit_samples=limit).data, split)
    collator = build_collator(cfg, dataset, train)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator,
                      num_workers=cfg.data.num_workers)


def sweep_section(cfg: Config, runner: Runner, args: argparse.Namespace) -> dict[str, float]:
    """Seconds of one evaluation pass vs collect-once + the 99-setting sweep, same split."""
    loader = clipart_loader(cfg, "test", train=False, limit=args.sweep_samples,
                            batch_size=cfg.run.eval_batch_size)
    model = runner.model
    task_type = loader.dataset.task_type

    def evaluation_pass() -> None:
        logits, labels = [], []
        for batch in loader:
            logits.append(runner.eval_step(batch).float())
            labels.append(batch.labels)
        compute_metrics(torch.cat(logits), torch.cat(labels), task_type)

    def collect_and_sweep() -> None:
        cache = collect(model, loader, precision=runner.precision, progress=False)
        sweep(model, cache, task_type, dataset="clipart", progress=False)

    t = interleaved({"eval": evaluation_pass, "sweep": collect_and_sweep}, repeats=args.sweep_repeats,
                    warmup=0)
    return {"eval_pass_s": t["eval"], "sweep_s": t["sweep"], "sweep_ratio": t["sweep"] / t["eval"]}


def data_section(cfg: Config, train_sps: float, args: argparse.Namespace) -> dict[str, float]:
    """Samples/s of the training data pipeline alone, and its ratio to the training step's."""
    loader = clipart_loader(cfg, "train", train=True, limit=args.data_samples,
                            batch_size=cfg.optim.batch_size)
    lengths: list[float] = []

    def one_epoch() -> None:
        for batch in loader:
            lengths.append(batch.input_ids.shape[1])

    elapsed = statistics.median(seconds(one_epoch) for _ in range(args.data_repeats))
    sps = len(loader.dataset) / elapsed
    return {"data_sps": sps, "data_ratio": sps / train_sps,
            "data_mean_tokens": statistics.mean(lengths)}


CACHE_COLUMNS = ("image_size", "batch_size", "cache_reads", "bitfit_sps", "frozen_sps",
                 "cached_sps", "cached_vs_bitfit", "cached_vs_frozen", "flop_ratio",
                 "build_s_per_sample", "cache_bytes_per_sample")
COMPILE_COLUMNS = ("image_size", "batch_size", "eager_sps", "compiled_sps", "compiled_vs_eager",
                   "compile_s", "eager_peak_fraction", "compiled_peak_fraction",
                   "loss_abs_diff", "logits_max_abs_diff")


def cache_section(base: Config, num_classes: int, image_size: int, args: argparse.Namespace
                  ) -> dict[str, Any]:
    """Training samples/s of the same step three ways, bf16, same batch size, interleaved.

    ``bitfit``: the encoders' biases train (the full forward and backward); ``frozen``: the
    encoders frozen, run in full; both take one step on a batch handed to them for free (no
    decoding). ``cached``: frozen, the prompts alone over the cached keys and values
    (``mmcore.prompt_cache``), timed as training runs it: an epoch over a recorded split
    of ``--cache-batches`` batches, its rows shuffled and taken by ``CachedCollator`` at
    every step (``cache_reads``: read in place, or gathered into the batch's blocks), so the
    cached path pays for its own data and the other two do not. Also the cost of building
    the cache (one recording forward) and its size, both per sample, and ``flop_ratio``: the
    BitFit step's FLOPs over the cached step's (counted), the speed-up the cache would give
    if its step ran as efficiently as the BitFit step.
    """
    from mmcore.prompt_cache import CachedCollator, SplitCache

    cfg = base.replace(image_size=image_size, batch_size=args.batch_size,
                       max_text_length=args.text_tokens, precision="bf16")
    batch = synthetic_batch(args.batch_size, image_size, args.text_tokens, num_classes)
    split = synthetic_batch(args.batch_size * args.cache_batches, image_size, args.text_tokens,
                            num_classes)
    torch.manual_seed(0)
    bitfit = build_model(cfg.replace(peft="bitfit"), num_classes, "multiclass")
    torch.manual_seed(0)
    frozen = build_model(cfg.replace(peft="frozen"), num_classes, "multiclass")
    runners = {"bitfit": Runner(bitfit, "bf16"), "frozen": Runner(frozen, "bf16")}

    def record(samples: Batch) -> SplitCache:
        with torch.no_grad(), precision_context("cpu", "bf16"):
            _, image = frozen.image_encoder.forward_recording(samples.pixel_values)
            _, text = frozen.text_encoder.forward_recording(samples.input_ids,
                                                            samples.attention_mask)
        return SplitCache(image, text, samples.has_image, samples.has_text, samples.labels,
                          "bench")

    build_s = statistics.median(seconds(lambda: record(batch)) for _ in range(args.steps))
    cache = record(split)
    collate = CachedCollator(cache, room=cfg.model.prompt_length)
    order = torch.Generator().manual_seed(0)

    def cached_epoch() -> None:
        for rows in torch.randperm(len(cache), generator=order).split(args.batch_size):
            runners["frozen"].train_step(collate(rows.tolist()))

    steps = {name: (lambda r=r: r.train_step(batch)) for name, r in runners.items()}
    t = interleaved(steps | {"cached": cached_epoch}, repeats=args.steps, warmup=args.warmup)
    t["cached"] /= args.cache_batches
    n = len(batch)
    first = collate(list(range(n)))
    gathered = replace(first, image_tokens=first.image_tokens.gathered(),  # the same products,
                       text_tokens=first.text_tokens.gathered())  # as torch's, which it counts
    flop_ratio = count_flops(steps["bitfit"]) / count_flops(
        lambda: runners["frozen"].train_step(gathered))
    return {"image_size": image_size, "batch_size": n,
            "cache_reads": "gathered" if first.image_tokens.rows is None else "in place",
            **{f"{name}_sps": n / t[name] for name in ("bitfit", "frozen", "cached")},
            "cached_vs_bitfit": t["bitfit"] / t["cached"],
            "cached_vs_frozen": t["frozen"] / t["cached"],
            "flop_ratio": flop_ratio, "build_s_per_sample": build_s / n,
            "cache_bytes_per_sample": cache.nbytes() / len(cache)}


def compile_section(base: Config, num_classes: int, image_size: int,
                    args: argparse.Namespace) -> dict[str, Any]:
    """The BitFit step eager vs compiled encoders: speed, compile time and agreement."""
    cfg = base.replace(peft="bitfit", image_size=image_size, batch_size=args.batch_size,
                       max_text_length=args.text_tokens, precision="bf16", compile=False)
    batch = synthetic_batch(args.batch_size, image_size, args.text_tokens, num_classes)
    torch.manual_seed(0)
    eager = build_model(cfg, num_classes, "multiclass")
    compiled = compile_encoders(copy.deepcopy(eager))
    with torch.no_grad(), precision_context("cpu", "bf16"):  # same weights, before any step
        outs = [m.eval()(batch) for m in (eager, compiled)]
    runners = {"eager": Runner(eager, "bf16"), "compiled": Runner(compiled, "bf16")}
    compile_s = seconds(lambda: runners["compiled"].train_step(batch))  # traces and compiles
    t = interleaved({name: (lambda r=r: r.train_step(batch)) for name, r in runners.items()}
                    | peak_products(), repeats=args.steps, warmup=args.warmup)
    flops = count_flops(lambda: runners["eager"].train_step(batch))
    peak = PEAK_FLOPS / t[f"matmul_{runners['eager'].precision}"]
    n = len(batch)
    return {"image_size": image_size, "batch_size": n,
            "eager_sps": n / t["eager"], "compiled_sps": n / t["compiled"],
            "compiled_vs_eager": t["eager"] / t["compiled"], "compile_s": compile_s,
            "eager_peak_fraction": flops / t["eager"] / peak,
            "compiled_peak_fraction": flops / t["compiled"] / peak,
            "loss_abs_diff": float((outs[0].loss - outs[1].loss).abs()),
            "logits_max_abs_diff": float((outs[0].logits - outs[1].logits).abs().max())}


# --- output -------------------------------------------------------------------------------


def markdown(rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def save(rows: list[dict[str, Any]], args: argparse.Namespace, name: str = "table",
         columns: tuple[str, ...] = COLUMNS) -> None:
    """Print the table and write ``<name>.md`` and ``<name>.json`` (with the environment)."""
    table = markdown(rows, columns)
    print(table, flush=True)
    (args.out / f"{name}.md").write_text(table + "\n")
    (args.out / f"{name}.json").write_text(json.dumps(
        {"environment": environment(args), "columns": list(columns), "rows": rows},
        indent=2) + "\n")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux): the speed-ups depend on it."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(args: argparse.Namespace) -> dict[str, Any]:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": cpu_model(),
            "load_average_1_5_15": os.getloadavg(), "command": " ".join(sys.argv),
            "quick": args.quick}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny batches, one timed step, a few real samples")
    p.add_argument("--presets", nargs="*", default=["offline", "paper"],
                   choices=["offline", "paper"])
    p.add_argument("--batch-size", type=int, default=32, help="offline preset")
    p.add_argument("--paper-batch-size", type=int, default=8, help="paper preset (random init)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--text-tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="timed rounds per measurement")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sweep-samples", type=int, default=0, help="0: the whole test split")
    p.add_argument("--sweep-repeats", type=int, default=2)
    p.add_argument("--data-samples", type=int, default=512)
    p.add_argument("--data-repeats", type=int, default=3)
    p.add_argument("--cache-sizes", nargs="*", type=int, default=[112, 224],
                   help="image sizes of the token-cache comparison (none: skip it)")
    p.add_argument("--cache-batches", type=int, default=4,
                   help="batches in the cached path's timed epoch (rows shuffled every epoch)")
    p.add_argument("--compile-sizes", nargs="*", type=int, default=[112],
                   help="image sizes of the eager-vs-compiled BitFit step (compiling takes "
                        "minutes; --quick skips it)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="Config overrides for the fast variant, e.g. compile=true")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.paper_batch_size = 4, 2
        args.image_size, args.text_tokens = 112, 16
        args.steps, args.warmup = 1, 1
        args.sweep_samples, args.sweep_repeats = 24, 1
        args.data_samples, args.data_repeats = 32, 1
        args.cache_sizes, args.cache_batches = [56], 2
        args.compile_sizes = []
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    base = Config().with_overrides(["peft=bitfit", *args.set])  # the paper's PEFT unless --set
    settings = {"offline": Setting("offline", True, args.batch_size, args.image_size,
                                   args.text_tokens),
                "paper": Setting("paper", False, args.paper_batch_size, args.image_size,
                                 args.text_tokens)}
    # heads sized for the clip-art categories, so the sweep can reuse the offline model
    num_classes = load_dataset(base.data, "test").num_classes
    rows = []
    for preset in args.presets:
        setting = settings[preset]
        cfg = setting.config(base)
        print(f"[{preset}] model: batch {setting.batch_size}, {setting.image_size} px, "
              f"{setting.text_tokens} tokens", flush=True)
        row: dict[str, Any] = {**vars(setting), "compile": cfg.run.compile}
        figures, fast = model_section(cfg, num_classes, args, preset)
        row.update(figures, precision=fast.precision)  # what its steps computed in
        if preset == "offline":  # the real data and tokenizer exist only for the offline preset
            print(f"[{preset}] sweep vs evaluation pass", flush=True)
            row.update(sweep_section(cfg, fast, args))
            print(f"[{preset}] data pipeline", flush=True)
            row.update(data_section(cfg, row["train_sps"], args))
        rows.append(row)
        del fast
        save(rows, args)  # after every preset, so an interrupted run keeps what it measured
    cache_rows = []
    for size in args.cache_sizes:
        print(f"[cache] bitfit vs frozen vs cached training step, {size} px", flush=True)
        cache_rows.append(cache_section(base, num_classes, size, args))
        save(cache_rows, args, "cache", CACHE_COLUMNS)
    compile_rows = []
    for size in args.compile_sizes:
        print(f"[compile] bitfit step eager vs torch.compile, {size} px", flush=True)
        compile_rows.append(compile_section(base, num_classes, size, args))
        save(compile_rows, args, "compile", COMPILE_COLUMNS)
    return rows


if __name__ == "__main__":
    main()
