"""The ``mergetheory run`` subcommand: run a user's experiment or figure module by path.

The module (any ``.py`` file defining ``main(argv) -> int``, such as an experiment built on
:func:`mergetheory.experiment.run_experiment` or a figure built on
:func:`mergetheory.figure.run_figure`) is imported from its path, with its folder first on
``sys.path`` (as ``python PATH.py`` would), and ``main`` gets every argument after the path::

    mergetheory run my_hypothesis.py --quick --out-dir results
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from .common import CliError

__all__ = ["HELP", "add_arguments", "run"]

HELP = "run a module's main(argv) by path (an experiment or figure outside the repository)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH.py", help="a Python file defining main(argv)")
    p.add_argument(
        "args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments passed to its main"
    )


def run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.suffix != ".py" or not path.is_file():
        raise CliError(f"{args.path}: no such Python file")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))
    sys.modules[path.stem] = module  # dataclasses / pickling look modules up by name
    spec.loader.exec_module(module)
    main = getattr(module, "main", None)
    if not callable(main):
        raise CliError(f"{args.path}: defines no main(argv) function")
    return int(main(list(args.args)) or 0)
