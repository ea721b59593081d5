"""The ``mergetheory run`` subcommand: run a user's experiment, figure or hypothesis.

``PATH.py``: the module is imported from its path, with its folder first on ``sys.path``
(as ``python PATH.py`` would). If it defines ``main(argv) -> int`` (an experiment built on
:func:`mergetheory.experiment.run_experiment`, a figure built on
:func:`mergetheory.figure.run_figure`), ``main`` gets every argument after the path;
otherwise every hypothesis it registered on import
(:func:`mergetheory.hypotheses.register_hypothesis`) is run:

    mergetheory run my_hypothesis.py --quick --out-dir results

``NAME``: a registered hypothesis (from an installed plugin's ``mergetheory.hypotheses``
entry point) is run by :func:`mergetheory.hypotheses.run_hypothesis`: its experiment with
the arguments, its figure into ``<out-dir>/figures`` and its report section into
``<out-dir>/NAME.md``::

    mergetheory run median_width --quick --out-dir results
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from .common import CliError, one_line

__all__ = ["HELP", "add_arguments", "run"]

HELP = "run a module's main(argv) or a hypothesis (by path, or a registered name)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "path", metavar="PATH.py|NAME", help="a Python file, or a registered hypothesis name"
    )
    p.add_argument(
        "args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments passed to its main"
    )


def _run_hypotheses(names: list[str], argv: list[str]) -> int:
    from ..hypotheses import HypothesisError, run_hypothesis

    for name in names:
        try:
            paths = run_hypothesis(name, argv)
        except (HypothesisError, KeyError, RuntimeError) as exc:
            raise CliError(one_line(exc.args[0] if exc.args else exc)) from None
        sys.stdout.write(f"hypothesis {name}: " + ", ".join(str(p) for p in paths.values()) + "\n")
    return 0


def run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.suffix != ".py":
        from ..hypotheses import HypothesisError, hypothesis_names

        try:
            known = hypothesis_names()
        except HypothesisError as exc:  # a broken installed plugin
            raise CliError(one_line(exc)) from None
        if args.path not in known:
            listed = ", ".join(known) or "none installed"
            raise CliError(f"{args.path}: not a Python file nor a registered hypothesis ({listed})")
        return _run_hypotheses([args.path], list(args.args))
    if not path.is_file():
        raise CliError(f"{args.path}: no such Python file")
    from ..hypotheses import HYPOTHESES, HypothesisError

    before = dict(HYPOTHESES)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))
    sys.modules[path.stem] = module  # dataclasses / pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except HypothesisError as exc:  # register_hypothesis refused it: one line, no traceback
        raise CliError(f"{args.path}: {one_line(exc)}") from None
    main = getattr(module, "main", None)
    if callable(main):
        return int(main(list(args.args)) or 0)
    new = [n for n, h in HYPOTHESES.items() if before.get(n) is not h]
    if not new:
        raise CliError(f"{args.path}: defines no main(argv) function and registers no hypothesis")
    return _run_hypotheses(new, list(args.args))
