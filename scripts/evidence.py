"""The method comparison at eta = 0.7, over training seeds, with predictor quality and convergence.

For each dataset, task, training setting and training seed, every method is trained once
(load-or-train: a rerun only fills in what is missing) and its test split encoded once;
each missing type is then scored on three seeded missing tables. A training seed's score
is the mean over its table seeds; the table reports mean +- std over training seeds and
the paired difference ours - CLS (same seed, same tables).

Methods: ``ours`` (prompts -> predictor), ``cls`` (the CLS embedding -> predictor),
``frozen`` (frozen encoders, logistic heads and ridge predictors in closed form: the
yardstick), and one alpha = 0 model (no predictor trained, fill "mean") scored with the
mean, zero and dummy fills. Under missing training the model of each missing type is
trained with that type (the protocol); ``--missing-types`` narrows that for a budget.

    python scripts/evidence.py                                   # everything below
    python scripts/evidence.py --datasets clipart --tasks category --settings complete
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from mmcore.config import Config
from mmcore.evaluation import predictor_report
from mmcore.experiment import COMPARED, method_config, run
from mmcore.metrics import metric_for

RATE = 0.7
TYPES = ("both", "image", "text")
TABLE_SEEDS = (0, 1, 2)
DATA = {"clipart": ("data/openclipart", ("category", "keywords")), "emoji": ("data/emoji", ("auto",))}
NAMES = ("ours", "cls", "frozen", "mean", "zero", "dummy")  # table columns


def converged(history: list[dict], metric: str) -> dict[str, float]:
    """The validation curve's last epochs: best epoch, and the change over the last third."""
    values = [r[f"val_{metric}"] for r in history if f"val_{metric}" in r]
    tail = values[-max(2, len(values) // 3):]
    return {"best_epoch": max(range(len(values)), key=values.__getitem__),
            "val_first": values[0], "val_last": values[-1],
            "val_tail_change": tail[-1] - tail[0]}


def one_setting(args: argparse.Namespace, dataset: str, task: str, setting: str,
                missing_type: str, seed: int) -> list[dict]:
    root, _ = DATA[dataset]
    out = args.out / dataset / task / setting / missing_type / f"seed{seed}"
    base = Config.from_params(dataset=dataset, data_root=root, task=task, missing_train=setting,
                              missing_rate=RATE, missing_type=missing_type, seed=seed,
                              epochs=args.epochs, progress=False, out_dir=str(out))
    types = TYPES if setting == "complete" else (missing_type,)
    rows, predictors = [], []
    for method, fills in COMPARED.items():
        tic = time.perf_counter()
        exp = run(method_config(base, method), rates=(RATE,), types=types, seeds=TABLE_SEEDS,
                  fills=fills)
        seconds = time.perf_counter() - tic
        metric = metric_for(exp.task_type).name
        final = json.loads((exp.run_dir / "final.json").read_text())
        rows.append({"kind": "run", "dataset": dataset, "task": task, "setting": setting,
                     "trained_type": missing_type, "method": method, "seed": seed,
                     "seconds": seconds, "epochs": final["epochs"],
                     **converged(exp.result.history, metric)})
        if method in ("ours", "cls", "frozen") and setting == "complete":
            for r in predictor_report(exp.model, exp.encode("test"), exp.task_type):
                predictors.append({"kind": "predictor", "dataset": dataset, "task": task,
                                   "method": method, "seed": seed, **r})
        for fill in fills:
            name = fill or method
            for t in types:
                values = [r[metric] for r in exp.sweep_rows
                          if r["missing_type"] == t and r["fill"] == (fill or exp.cfg.model.fill)]
                rows.append({"kind": "score", "dataset": dataset, "task": task,
                             "setting": setting, "missing_type": t, "method": name,
                             "seed": seed, "metric": metric, "value": statistics.mean(values)})
    return rows + predictors


def summarise(rows: list[dict]) -> str:
    """Markdown: mean +- std over training seeds, the paired ours - cls difference, predictors."""
    scores = [r for r in rows if r["kind"] == "score"]
    methods = list(NAMES)
    lines = ["| dataset | task | training | missing | " + " | ".join(methods) + " | ours - cls |",
             "|" + "---|" * (len(methods) + 5)]
    for key in sorted({(r["dataset"], r["task"], r["setting"], r["missing_type"]) for r in scores}):
        cells, by_seed = [], {}
        for method in methods:
            hit = {r["seed"]: r["value"] for r in scores
                   if (r["dataset"], r["task"], r["setting"], r["missing_type"]) == key
                   and r["method"] == method}
            by_seed[method] = hit
            cells.append(_pm(list(hit.values())))
        paired = [by_seed["ours"][s] - by_seed["cls"][s] for s in by_seed["ours"]
                  if s in by_seed["cls"]]
        lines.append("| " + " | ".join(key) + " | " + " | ".join(cells) + f" | {_pm(paired)} |")
    preds = [r for r in rows if r["kind"] == "predictor"]
    if preds:
        head = next(k for k in preds[0] if k.endswith("_predicted")).removesuffix("_predicted")
        lines += ["", "| dataset | task | method | direction | R^2 | cosine | median rank "
                  f"(chance) | {head} fed truth | fed prediction | fed mean |", "|" + "---|" * 10]
        for key in sorted({(r["dataset"], r["task"], r["method"], r["direction"]) for r in preds}):
            hit = [r for r in preds if (r["dataset"], r["task"], r["method"], r["direction"]) == key]
            lines.append("| " + " | ".join(key) + " | " + " | ".join([
                _pm([r["r2"] for r in hit], 1), _pm([r["cosine"] for r in hit], 1),
                f"{statistics.mean(r['median_rank'] for r in hit):.0f} ({hit[0]['chance_rank']:.0f})",
                _pm([r[f"{head}_true"] for r in hit]), _pm([r[f"{head}_predicted"] for r in hit]),
                _pm([r[f"{head}_mean"] for r in hit])]) + " |")
    return "\n".join(lines) + "\n"


def _pm(values: list[float], scale: float = 100.0) -> str:
    if not values:
        return "-"
    digits = 1 if scale == 100.0 else 3
    spread = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{statistics.mean(values) * scale:.{digits}f} ± {spread:.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(DATA), choices=list(DATA))
    p.add_argument("--tasks", nargs="+", default=None, help="clipart tasks (default: both)")
    p.add_argument("--settings", nargs="+", default=["complete", "missing"])
    p.add_argument("--missing-types", nargs="+", default=list(TYPES),
                   help="types trained under missing training (one model per type)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds")
    p.add_argument("--epochs", type=int, default=Config().optim.epochs)
    p.add_argument("--out", type=Path, default=Path("runs/evidence"))
    args = p.parse_args()

    rows: list[dict] = []
    for dataset in args.datasets:
        for task in (args.tasks if args.tasks and dataset == "clipart" else DATA[dataset][1]):
            for setting in args.settings:
                for missing_type in (args.missing_types if setting == "missing" else ("both",)):
                    for seed in args.seeds:
                        rows += one_setting(args, dataset, task, setting, missing_type, seed)
                        print(json.dumps(rows[-1]), flush=True)
                        args.out.mkdir(parents=True, exist_ok=True)
                        (args.out / "rows.json").write_text(json.dumps(rows, indent=1))
    table = summarise(rows)
    (args.out / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
