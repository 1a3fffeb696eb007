"""Which read-only prompt design works best: initialisation x pooling, over training seeds.

Trains the method (``ours``, the default recipe) on the default data once per variant and
training seed (load-or-train: a rerun fills in what is missing) and measures, on the test
split:

- what the prompts learned to read: the mean pairwise cosine of the K prompt outputs of a
  sample (1 = the K prompts are copies), and the cosine of their mean with the encoder's
  own embedding (CLS; 1 = the prompts only repeat it);
- the predictors: R^2 and cosine of each direction's prediction against the truth, and the
  target head's accuracy fed the prediction against the same head fed the training mean;
- the task: complete-test accuracy and eta = 0.7 accuracy per missing type (3 tables).

Results go to ``results/prompt_variants.json`` (rows) and ``.md`` (the table), which the
design chapter reads.

    python scripts/prompt_variants.py                 # 2 inits x 3 poolings x 3 seeds
    python scripts/prompt_variants.py --seeds 0       # one seed of each
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mmcore.config import Config
from mmcore.experiment import method_config, run
from mmcore.evaluation import predictor_report

INITS = ("cls", "independent")
POOLS = ("mean", "attention", "concat")
TYPES = ("both", "image", "text")
RATE = 0.7


def prompt_geometry(exp) -> dict[str, float]:
    """Diversity of the K prompt outputs and their agreement with the encoder's embedding."""
    captured: dict[str, list[torch.Tensor]] = {"image": [], "text": []}
    for modality, other in (("image", "text"), ("text", "image")):
        predictor = exp.model.predictors[f"{modality}_to_{other}"]
        pool = predictor.pool_inputs  # handed the (N, K, D) prompt outputs
        predictor.pool_inputs = lambda x, pool=pool, m=modality: (
            captured[m].append(x.detach().float().cpu()) or pool(x))
    try:
        cache = exp.encode("test")
    finally:
        for modality, other in (("image", "text"), ("text", "image")):
            del exp.model.predictors[f"{modality}_to_{other}"].pool_inputs  # the method again
    row = {}
    for modality in ("image", "text"):
        prompts = torch.cat(captured[modality])  # (N, K, D), rows that have the modality
        unit = F.normalize(prompts, dim=-1)
        k = prompts.shape[1]
        pairwise = (unit @ unit.transpose(1, 2)).sum((1, 2)).sub(k).div(k * (k - 1))
        own = getattr(cache.emb, f"{modality}_emb")[getattr(cache.emb, f"has_{modality}")]
        row[f"{modality}_prompt_pairwise_cosine"] = float(pairwise.mean())
        row[f"{modality}_prompt_mean_cosine_to_cls"] = float(
            F.cosine_similarity(prompts.mean(1), own.float(), dim=-1).mean())
    return row, cache


def one_variant(args: argparse.Namespace, init: str, pool: str, seed: int) -> dict:
    out = args.out_dir / f"{init}-{pool}" / f"seed{seed}"
    cfg = method_config(Config.from_params(seed=seed, prompt_init=init, prompt_pool=pool,
                                           epochs=args.epochs, limit_samples=args.limit_samples,
                                           progress=False, out_dir=str(out)), "ours")
    tic = time.perf_counter()
    exp = run(cfg, rates=(0.0, RATE), types=TYPES, seeds=(0, 1, 2), fills=(None,))
    seconds = time.perf_counter() - tic
    row = {"init": init, "pool": pool, "seed": seed, "seconds": seconds,
           "complete": statistics.mean(r["accuracy"] for r in exp.sweep_rows
                                       if r["missing_rate"] == 0.0)}
    for t in TYPES:
        row[f"eta{RATE}_{t}"] = statistics.mean(
            r["accuracy"] for r in exp.sweep_rows
            if r["missing_type"] == t and r["missing_rate"] == RATE)
    geometry, cache = prompt_geometry(exp)
    row.update(geometry)
    for r in predictor_report(exp.model, cache, exp.task_type):
        key = r["direction"].replace(" -> ", "_to_")
        row.update({f"{key}_r2": r["r2"], f"{key}_cosine": r["cosine"],
                    f"{key}_head_predicted": r["head_accuracy_predicted"],
                    f"{key}_head_mean": r["head_accuracy_mean"]})
    return row


def table(rows: list[dict]) -> str:
    """Markdown: mean +- std over seeds per variant."""
    columns = ["complete", *(f"eta{RATE}_{t}" for t in TYPES), "image_prompt_pairwise_cosine",
               "text_prompt_pairwise_cosine", "image_to_text_r2", "text_to_image_r2",
               "image_to_text_head_predicted", "text_to_image_head_predicted"]
    lines = ["| init | pool | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 2)]
    for init in INITS:
        for pool in POOLS:
            hit = [r for r in rows if (r["init"], r["pool"]) == (init, pool)]
            if not hit:
                continue
            cells = []
            for c in columns:
                values = [r[c] for r in hit if r.get(c) is not None]
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):.3f} ± {sd:.3f}" if values else "-")
            lines.append(f"| {init} | {pool} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds")
    p.add_argument("--inits", nargs="+", default=list(INITS), choices=INITS)
    p.add_argument("--pools", nargs="+", default=list(POOLS), choices=POOLS)
    p.add_argument("--epochs", type=int, default=Config().optim.epochs)
    p.add_argument("--limit-samples", type=int, default=0, help="per split (0: all; for tests)")
    p.add_argument("--out-dir", type=Path, default=Path("runs/prompt_variants"))
    p.add_argument("--results", type=Path, default=Path("results/prompt_variants"))
    args = p.parse_args(argv)
    saved = args.results.with_suffix(".json")
    rows = json.loads(saved.read_text())["rows"] if saved.exists() else []
    for seed in args.seeds:
        for init in args.inits:
            for pool in args.pools:
                rows = [r for r in rows if (r["init"], r["pool"], r["seed"]) != (init, pool, seed)]
                rows.append(one_variant(args, init, pool, seed))
                print(json.dumps(rows[-1]), flush=True)
                saved.parent.mkdir(parents=True, exist_ok=True)
                saved.write_text(json.dumps({"rate": RATE, "rows": rows}, indent=1))
    args.results.with_suffix(".md").write_text(table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
