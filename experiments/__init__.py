"""Experiments: thin scripts, frozen config -> library calls -> ``results/<name>.npz + .json``.

Contract for a module ``experiments/<name>.py`` (discovered by ``experiments.run_all``):

* it defines ``main(argv: list[str] | None = None) -> int`` (0 on success), built on
  :func:`run_experiment` (hence :func:`make_parser`), so it accepts ``--quick`` (a small
  configuration for tests) and ``--out-dir DIR`` (default: the repository's ``results/``);
* its configuration is a frozen NamedTuple / dataclass holding one integer ``seed`` from
  which every PRNG key is derived;
* it writes its results with :func:`mergetheory.io.save_results` and does no work at
  import time.

Global JAX flags are set by :func:`configure_jax`, which :func:`run_experiment` calls
first (so every experiment, run alone or by ``run_all``, runs under them), never by the
library.
"""

from __future__ import annotations

import os

# Before NumPy / SciPy / JAX load OpenBLAS: one BLAS thread, so LAPACK calls (SVD, QR)
# do not fight XLA's thread pool (measured 20-40x slower SVDs on 2 cores otherwise).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS_DIR = REPO_ROOT / "results"


COMPILE_CACHE_DIR = DEFAULT_RESULTS_DIR / ".jax_cache"
"""JAX's persistent compilation cache for experiments (``MERGETHEORY_COMPILE_CACHE=0`` or
``--no-compile-cache`` turns it off; ``MERGETHEORY_COMPILE_CACHE=/path`` moves it)."""


def configure_jax(*, x64: bool = True, compile_cache: bool = True) -> None:
    """Set the global JAX flags the experiments run under (x64 by default).

    With ``compile_cache`` (and ``MERGETHEORY_COMPILE_CACHE`` not ``0``), compiled programs
    are kept in JAX's persistent cache (:data:`COMPILE_CACHE_DIR`), so a second
    ``make reproduce`` skips most XLA compiles. Results are the same either way: the cache
    stores the same executables.
    """
    import jax

    jax.config.update("jax_enable_x64", x64)
    setting = os.environ.get("MERGETHEORY_COMPILE_CACHE", "1")
    if compile_cache and setting != "0":
        path = Path(setting) if setting not in ("", "1") else COMPILE_CACHE_DIR
        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def make_parser(description: str) -> argparse.ArgumentParser:
    """Argument parser with the two options every experiment accepts."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="small configuration (seconds; used by tests)"
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_RESULTS_DIR,
        help=f"directory for the results files (default: {DEFAULT_RESULTS_DIR})",
    )
    parser.add_argument("--no-progress", action="store_true", help="disable progress bars")
    parser.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="do not use JAX's persistent compilation cache (results/.jax_cache)",
    )
    return parser


def run_experiment(
    name: str,
    description: str | None,
    run: Callable[[Any, argparse.Namespace], Any],
    config: Any,
    quick_config: Any,
    argv: list[str] | None = None,
) -> int:
    """The ``main`` of an experiment: parse, run, time, save atomically; return 0.

    Args:
      name: results stem (``<out-dir>/<name>.npz`` + ``.json``).
      description: the module docstring (its first line is the ``--help`` text).
      run: ``run(config, args) -> arrays`` or ``-> (arrays, summary)``; ``args`` carries
        ``out_dir`` and ``no_progress``.
      config: the full configuration (a NamedTuple).
      quick_config: the ``--quick`` configuration.
      argv: command-line arguments (``None``: ``sys.argv[1:]``).

    The sidecar metadata is the configuration's fields, ``quick`` and, when ``run``
    returns one, ``summary`` (with the wall time ``elapsed_s`` added; the arrays get an
    ``elapsed_s`` entry too).
    """
    from mergetheory.io import save_results

    args = make_parser((description or name).splitlines()[0]).parse_args(argv)
    configure_jax(compile_cache=not args.no_compile_cache)
    cfg = quick_config if args.quick else config
    start = time.perf_counter()
    out = run(cfg, args)
    arrays, summary = out if isinstance(out, tuple) else (out, None)
    elapsed = time.perf_counter() - start
    arrays["elapsed_s"] = np.asarray(elapsed)
    meta: dict[str, Any] = {**cfg._asdict(), "quick": args.quick}
    if summary is not None:
        meta["summary"] = {**summary, "elapsed_s": elapsed}
    save_results(Path(args.out_dir) / name, arrays, meta)
    return 0
