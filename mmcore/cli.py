"""``python -m mmcore``: train, evaluate, sweep and check data from the command line.

Every command builds one ``Config``: the YAML file of ``--config`` (default: the built-in
defaults, i.e. the offline preset on the committed OpenClipArt data), then each
``--set key=value`` in order (``--set epochs=5`` or ``--set optim.epochs=5``).

Anything that stops a command is one line on stderr and exit status 2, never a
traceback; bad data is first shown as the whole ``check-data`` report. ``train`` prints
the task and the class list before it trains and saves them in the run folder
(``data.json``, with the full report in ``check_data.json``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence, get_args, get_type_hints

from mmcore import experiment
from mmcore.checkpoint import CheckpointError, write_json
from mmcore.config import Config, ConfigError, ModelConfig
from mmcore.data.check import STOP_EXIT_CODE, Report, check_data
from mmcore.data.collate import BadSampleError
from mmcore.data.problems import DataError
from mmcore.sweep import DEFAULT_RATES, DEFAULT_SEEDS
from mmcore.train import distributed_env

EPILOG = """examples:
  python -m mmcore train                                    # offline default, runs/default
  python -m mmcore train --config configs/offline.yaml --set epochs=5 --set out_dir=runs/e5
  python -m mmcore train --method cls                       # the CLS-token baseline
  python -m mmcore sweep --run runs/offline/ours            # metric vs missing rate (CSV)
  python -m mmcore check-data --set dataset=manifest --set data_root=my/manifest.csv
  torchrun --nproc_per_node=2 -m mmcore train --config configs/offline.yaml   # DDP
"""
# what a command may stop on: each carries a message that names the file, key or run
STOPS = (ConfigError, DataError, BadSampleError, CheckpointError, ValueError, OSError)


class UnfinishedRun(ValueError):
    """``evaluate`` or ``sweep`` was given a folder that holds no finished run."""


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path,
                   help="YAML config (see configs/); default: built-in defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set epochs=5 (repeatable)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m mmcore", epilog=EPILOG,
                                  formatter_class=argparse.RawDescriptionHelpFormatter,
                                  description="Missing-modality prediction with read-only prompts.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="check the data, train a model (resumes an interrupted "
                                     "run), then sweep the test split")
    _config_args(p)
    p.add_argument("--method", choices=list(experiment.METHODS), default=None,
                   help="train a method of the comparison into OUT_DIR/METHOD instead of the "
                        "config as is")
    p.add_argument("--no-sweep", action="store_true",
                   help="skip the missing-rate sweep on the test split")

    p = sub.add_parser("evaluate",
                       help="print a finished run's test metrics under its missing table")
    p.add_argument("--run", type=Path, required=True, help="run folder (holds config.yaml)")

    p = sub.add_parser("sweep", help="score a finished run over missing rates x types x seeds "
                                     "(one pass)")
    p.add_argument("--run", type=Path, required=True, help="run folder (holds config.yaml)")
    p.add_argument("--rates", type=float, nargs="+", default=None,
                   help="missing rates (default 0.0 .. 1.0 by 0.1)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="missing-table seeds (default 0 1 2)")
    p.add_argument("--fills", nargs="+", default=None,
                   choices=get_args(get_type_hints(ModelConfig)["fill"]),
                   help="fills to score (default: the run's own)")

    p = sub.add_parser("check-data",
                       help="validate a dataset before training: every bad file and row")
    _config_args(p)
    p.add_argument("--report", type=Path, default=None,
                   help="also save every problem as JSON in this file")
    return top


def load_config(args: argparse.Namespace) -> Config:
    """The command's config: a finished run's own, or ``--config`` then ``--set``."""
    if getattr(args, "run", None) is not None:
        return Config.from_yaml(finished_run(args.run) / "config.yaml")
    if args.config is not None:
        return Config.from_yaml(args.config, args.overrides)
    return Config().with_overrides(args.overrides)


def finished_run(run_dir: Path) -> Path:
    """``run_dir`` if it holds a finished run; else ``UnfinishedRun`` naming the command
    that trains it (``final.json`` is written last, when training ends)."""
    if not (run_dir / "config.yaml").is_file():
        raise UnfinishedRun(f"{run_dir} holds no run (no config.yaml); train one with: "
                            f"python -m mmcore train --set out_dir={run_dir}")
    if not (run_dir / "final.json").is_file():
        raise UnfinishedRun(f"{run_dir} is not a finished run (no final.json); finish its "
                            f"training with: python -m mmcore train --config "
                            f"{run_dir / 'config.yaml'}")
    return run_dir


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = load_config(args)
        if args.command == "check-data":
            return _check_data(cfg, args.report)
        if args.command == "train":
            return _train(cfg, args.method, sweep=not args.no_sweep)
        return _evaluate(cfg) if args.command == "evaluate" else _sweep(cfg, args)
    except STOPS as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return STOP_EXIT_CODE
    except KeyboardInterrupt:  # outside training (which saves and stops on its own)
        print("error: interrupted", file=sys.stderr)
        return 130


def _check_data(cfg: Config, report_path: Path | None) -> int:
    report = check_data(cfg)
    print(report.format())
    if report_path is not None:
        print(f"report saved to {report.save(report_path)}")
    if report.stops:
        print(f"error: {len(report.stops)} problem(s) in the data stop training (listed above)",
              file=sys.stderr)
    return report.exit_code


def _train(cfg: Config, method: str | None, sweep: bool) -> int:
    if method:
        cfg = experiment.method_config(cfg, method)
    main_process = distributed_env().is_main
    report = check_data(cfg, progress=cfg.run.progress and main_process)
    if main_process:
        print(report.format())
    if report.stops:
        raise DataError(f"{len(report.stops)} problem(s) in the data stop training (listed "
                        "above); fix them, then run the same command again")
    if main_process:
        _record_data(report, cfg)
    exp = experiment.run(cfg) if sweep and main_process else experiment.train(cfg)
    if main_process:
        print(f"run folder: {exp.run_dir}  best {exp.result.metric}: "
              f"{exp.result.best_value:.4f} (epoch {exp.result.best_epoch})")
    return 0


def _record_data(report: Report, cfg: Config) -> None:
    """Save the task, classes and split sizes a run trains on; a resumed run must match.

    A folder holding a run of another config is left alone: training refuses it next,
    naming the keys that changed.
    """
    run_dir = Path(cfg.run.out_dir)
    config = run_dir / "config.yaml"
    if config.is_file() and config.read_text() != cfg.to_yaml():
        return
    record = {"dataset": report.dataset, "data_root": report.data_root,
              "task_type": report.task_type, "task_reason": report.task_reason,
              "classes": report.classes, "split_sizes": report.split_sizes}
    saved = run_dir / "data.json"
    if saved.is_file():
        before = json.loads(saved.read_text())
        changed = [k for k in ("task_type", "classes") if before.get(k) != record[k]]
        if changed:
            raise DataError(f"{saved}: the data changed since this run started "
                            f"({', '.join(changed)}: was {before.get(changed[0])}); use "
                            "another run.out_dir")
        return
    write_json(saved, record)
    report.save(run_dir / "check_data.json")


def _evaluate(cfg: Config) -> int:
    exp = experiment.run(cfg)
    print(json.dumps(json.loads((exp.run_dir / "test_metrics.json").read_text()), indent=2))
    return 0


def _sweep(cfg: Config, args: argparse.Namespace) -> int:
    exp = experiment.run(cfg, rates=args.rates or DEFAULT_RATES,
                         seeds=args.seeds or DEFAULT_SEEDS, fills=args.fills or (None,))
    print(f"{len(exp.sweep_rows)} rows -> {exp.run_dir / 'sweep.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
