"""What ``python -m mmcore`` runs once its arguments are parsed (``mmcore.cli``).

Anything that stops a command is one line on stderr and exit status 2, never a
traceback; ``evaluate`` and ``sweep`` refuse a folder without a finished run, naming the
command that trains it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmcore import experiment
from mmcore.checkpoint import CheckpointError, write_json
from mmcore.config import Config, ConfigError
from mmcore.data.check import STOP_EXIT_CODE, Report, check_data
from mmcore.data.collate import BadSampleError
from mmcore.data.problems import DataError
from mmcore.evaluation import DEFAULT_RATES, DEFAULT_SEEDS
from mmcore.runtime import distributed_env

# what a command may stop on: each carries a message that names the file, key or run
STOPS = (ConfigError, DataError, BadSampleError, CheckpointError, ValueError, OSError)


class UnfinishedRun(ValueError):
    """``evaluate`` or ``sweep`` was given a folder that holds no finished run."""


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


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; its exit status."""
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
    exp = experiment.run(cfg) if sweep and main_process else experiment.build_and_train(cfg)
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
