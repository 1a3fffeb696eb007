"""``python -m mmcore``: train, evaluate, sweep and check data from the command line.

Every command builds one ``Config``: the YAML file of ``--config`` (default: the built-in
defaults, i.e. the offline preset on the committed OpenClipArt data), then each
``--set key=value`` in order (``--set epochs=5`` or ``--set optim.epochs=5``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from mmcore.config import Config, ConfigError

EPILOG = """examples:
  python -m mmcore train                                    # offline default, runs/default
  python -m mmcore train --config configs/offline.yaml --set epochs=5 --set out_dir=runs/e5
  python -m mmcore train --method cls                       # the CLS-token baseline
  python -m mmcore sweep --run runs/offline/ours            # metric vs missing rate (CSV)
  python -m mmcore check-data --set dataset=manifest --set data_root=my/manifest.csv
  torchrun --nproc_per_node=2 -m mmcore train --config configs/offline.yaml   # DDP
"""


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config (see configs/); default: built-in defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set epochs=5 (repeatable)")


def parser() -> argparse.ArgumentParser:
    from mmcore.experiment import METHODS

    top = argparse.ArgumentParser(prog="python -m mmcore", epilog=EPILOG,
                                  formatter_class=argparse.RawDescriptionHelpFormatter,
                                  description="Missing-modality prediction with read-only prompts.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model (resumes an interrupted run), then sweep the test split")
    _config_args(p)
    p.add_argument("--method", choices=list(METHODS), default=None,
                   help="train a method of the comparison into OUT_DIR/METHOD instead of the config as is")
    p.add_argument("--no-sweep", action="store_true", help="skip the missing-rate sweep on the test split")

    p = sub.add_parser("evaluate", help="print a finished run's test metrics under its missing table")
    p.add_argument("--run", type=Path, required=True, help="run folder (holds config.yaml)")

    p = sub.add_parser("sweep", help="score a finished run over missing rates x types x seeds (one pass)")
    p.add_argument("--run", type=Path, required=True, help="run folder (holds config.yaml)")
    p.add_argument("--rates", type=float, nargs="+", default=None, help="missing rates (default 0.0 .. 1.0 by 0.1)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="missing-table seeds (default 0 1 2)")
    p.add_argument("--fills", nargs="+", default=None, choices=["predict", "zero", "dummy"],
                   help="fills to score (default: the run's own)")

    p = sub.add_parser("check-data", help="validate a dataset before training: every bad file and row")
    _config_args(p)
    return top


def load_config(args: argparse.Namespace) -> Config:
    if getattr(args, "run", None) is not None:
        return Config.from_yaml(args.run / "config.yaml")
    if args.config is not None:
        return Config.from_yaml(args.config, args.overrides)
    return Config().with_overrides(args.overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = load_config(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "check-data":
        from mmcore.data.validate import main_check_data

        return main_check_data(cfg)

    from mmcore import experiment
    from mmcore.sweep import DEFAULT_RATES, DEFAULT_SEEDS
    from mmcore.train import distributed_env

    if args.command == "train":
        if args.method:
            cfg = experiment.method_config(cfg, args.method)
        if args.no_sweep or not distributed_env().is_main:
            exp = experiment.train(cfg)
        else:
            exp = experiment.run(cfg)
        if distributed_env().is_main:
            print(f"run folder: {exp.run_dir}  best {exp.result.metric}: "
                  f"{exp.result.best_value:.4f} (epoch {exp.result.best_epoch})")
        return 0
    if args.command == "evaluate":
        exp = experiment.run(cfg)
        print(json.dumps(json.loads((exp.run_dir / "test_metrics.json").read_text()), indent=2))
        return 0
    exp = experiment.run(cfg, rates=args.rates or DEFAULT_RATES, seeds=args.seeds or DEFAULT_SEEDS,
                         fills=args.fills or (None,))
    print(f"{len(exp.sweep_rows)} rows -> {exp.run_dir / 'sweep.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
