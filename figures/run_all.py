"""Draw every figure: each ``figures/fig_*.py`` module's ``main()``.

Usage: ``python -m figures.run_all [--results-dir DIR] [--out-dir DIR] [--only NAME ...]``.

Before drawing, every figure's ``RESULTS`` stems are checked; if any results file is
missing the run stops with a message naming the file(s) and the experiment to run, and
exit status 1. A figure that fails while drawing is reported and the others still run.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback
from collections.abc import Callable
from types import ModuleType

from tqdm import tqdm

import figures
from figures._style import make_parser
from mergetheory.io import ResultsNotFoundError


def discover() -> dict[str, ModuleType]:
    """``{name: module}`` of every ``fig_*`` module that defines ``main``, sorted."""
    found = {}
    for info in sorted(pkgutil.iter_modules(figures.__path__), key=lambda i: i.name):
        if not info.name.startswith("fig_") or info.ispkg:
            continue
        module = importlib.import_module(f"figures.{info.name}")
        if callable(getattr(module, "main", None)):
            found[info.name] = module
    return found


def missing_results(modules: dict[str, ModuleType], results_dir) -> list[str]:
    """Human-readable lines for every results file a figure needs but that is absent."""
    lines = []
    for name, module in modules.items():
        for stem in getattr(module, "RESULTS", ()):
            absent = [
                str(results_dir / f"{stem}{suffix}")
                for suffix in (".npz", ".json")
                if not (results_dir / f"{stem}{suffix}").is_file()
            ]
            if absent:
                lines.append(
                    f"figures/{name}.py needs results '{stem}', missing: {', '.join(absent)}; "
                    f"run `python -m experiments.{stem}` (or `python -m experiments.run_all`)"
                )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Draw the figures; return 0 if all were written, 1 otherwise."""
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="draw only these figures")
    parser.add_argument("--no-progress", action="store_true", help="disable progress bars")
    args = parser.parse_args(argv)

    modules = discover()
    if args.only:
        unknown = sorted(set(args.only) - set(modules))
        if unknown:
            parser.error(f"unknown figure(s) {unknown}; available: {sorted(modules)}")
        modules = {k: v for k, v in modules.items() if k in args.only}

    missing = missing_results(modules, args.results_dir)
    if missing:
        tqdm.write("error: missing results files\n  " + "\n  ".join(missing), file=sys.stderr)
        return 1

    passthrough = ["--results-dir", str(args.results_dir), "--out-dir", str(args.out_dir)]
    failed = []
    for name, module in tqdm(modules.items(), desc="figures", disable=args.no_progress):
        run: Callable[..., int] = module.main
        try:
            status = run(list(passthrough))
        except ResultsNotFoundError as err:
            tqdm.write(f"error: figures/{name}.py: {err}", file=sys.stderr)
            status = 1
        except Exception:
            traceback.print_exc()
            status = 1
        if status:
            failed.append(name)
    if failed:
        tqdm.write(f"{len(failed)} figure(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    tqdm.write(f"figures in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
