"""Run every experiment: each module in ``experiments/`` that defines ``main(argv=None)``.

Usage: ``python -m experiments.run_all [--quick] [--out-dir DIR] [--only NAME ...]``.

Modules are discovered with :mod:`pkgutil` (everything in this package except
``run_all`` and names starting with ``_``), imported, and run in alphabetical order with
``--quick`` / ``--out-dir`` passed through. A failing experiment does not stop the others;
the exit status is 1 if any failed. Global JAX flags (x64) are set here, once, before any
experiment runs; the library never sets them.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
import traceback
from collections.abc import Callable

from tqdm import tqdm

import experiments
from experiments import make_parser

_SELF = "run_all"


def discover() -> dict[str, Callable[..., int]]:
    """``{name: main}`` of every experiment module, in alphabetical order, except that a
    module listing others in its ``RUN_AFTER`` tuple (e.g. to load a cache they build)
    comes after them."""
    found, after = {}, {}
    for info in sorted(pkgutil.iter_modules(experiments.__path__), key=lambda i: i.name):
        if info.name == _SELF or info.name.startswith("_") or info.ispkg:
            continue
        module = importlib.import_module(f"experiments.{info.name}")
        main = getattr(module, "main", None)
        if callable(main):
            found[info.name] = main
            after[info.name] = tuple(getattr(module, "RUN_AFTER", ()))
    order: list[str] = []
    pending = list(found)
    while pending:  # stable: the first alphabetical module whose predecessors are placed
        ready = next(
            (n for n in pending if all(d in order or d not in found for d in after[n])), None
        )
        if ready is None:
            raise RuntimeError(f"experiments: RUN_AFTER cycle among {pending}")
        order.append(ready)
        pending.remove(ready)
    return {n: found[n] for n in order}


def main(argv: list[str] | None = None) -> int:
    """Run the experiments; return 0 if all succeeded, 1 otherwise."""
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="run only these experiments (module names)"
    )
    args = parser.parse_args(argv)

    mains = discover()
    if args.only:
        unknown = sorted(set(args.only) - set(mains))
        if unknown:
            parser.error(f"unknown experiment(s) {unknown}; available: {sorted(mains)}")
        mains = {k: v for k, v in mains.items() if k in args.only}
    passthrough = ["--out-dir", str(args.out_dir)]
    if args.quick:
        passthrough.append("--quick")
    if args.no_progress:
        passthrough.append("--no-progress")
    if args.no_compile_cache:
        passthrough.append("--no-compile-cache")

    failed: list[str] = []
    timings: dict[str, float] = {}
    bar = tqdm(mains.items(), desc="experiments", unit="exp", disable=args.no_progress)
    for name, run in bar:
        bar.set_postfix_str(name)
        start = time.perf_counter()
        try:
            status = run(list(passthrough))
        except Exception:  # report and go on with the other experiments
            traceback.print_exc()
            status = 1
        timings[name] = time.perf_counter() - start
        if status:
            failed.append(name)
    for name, sec in timings.items():
        mark = "FAILED" if name in failed else "ok"
        tqdm.write(f"{name:<32s} {sec:8.1f} s  {mark}")
    if failed:
        tqdm.write(f"{len(failed)} experiment(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    tqdm.write(f"results in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
