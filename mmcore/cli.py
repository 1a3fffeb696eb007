"""``python -m mmcore``: train, evaluate, sweep and check data from the command line.

Every command builds one ``Config``: the YAML file of ``--config`` (default: the built-in
defaults, i.e. the offline preset on the committed OpenClipArt data), then each
``--set key=value`` in order (``--set epochs=5`` or ``--set optim.epochs=5``).

Anything that stops a command is one line on stderr and exit status 2, never a
traceback; bad data is first shown as the whole ``check-data`` report. ``train`` prints
the task and the class list before it trains and saves them in the run folder
(``data.json``, with the full report in ``check_data.json``).

This module is the parser alone: it imports no torch, no loader, no image library, so
``--help`` and a usage error answer at once; ``mmcore.commands`` runs the commands.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from mmcore.choice_lists import METHODS, Fill, choices

EPILOG = """examples:
  python -m mmcore train                                    # offline default, runs/default
  python -m mmcore train --config configs/offline.yaml --set epochs=5 --set out_dir=runs/e5
  python -m mmcore train --method cls                       # the CLS-token baseline
  python -m mmcore sweep --run runs/offline/ours            # metric vs missing rate (CSV)
  python -m mmcore check-data --set dataset=manifest --set data_root=my/manifest.csv
  torchrun --nproc_per_node=2 -m mmcore train --config configs/offline.yaml   # DDP
"""


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
    p.add_argument("--method", choices=list(METHODS), default=None,
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
                   choices=choices(Fill),
                   help="fills to score (default: the run's own)")

    p = sub.add_parser("check-data",
                       help="validate a dataset before training: every bad file and row")
    _config_args(p)
    p.add_argument("--report", type=Path, default=None,
                   help="also save every problem as JSON in this file")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # imported once a command runs, not at the top: the training stack (torch, timm, PIL,
    # the dataset loaders) takes seconds to import, which --help and usage errors skip
    from mmcore.commands import run_command

    return run_command(args)


if __name__ == "__main__":
    raise SystemExit(main())
