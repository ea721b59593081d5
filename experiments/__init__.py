"""Experiments: thin scripts, frozen config -> library calls -> ``results/<name>.npz + .json``.

Contract for a module ``experiments/<name>.py`` (discovered by ``experiments.run_all``):

* it defines ``main(argv: list[str] | None = None) -> int`` (0 on success), built on
  :func:`make_parser`, so it accepts ``--quick`` (a small configuration for tests) and
  ``--out-dir DIR`` (default: the repository's ``results/``);
* its configuration is a frozen NamedTuple / dataclass holding one integer ``seed`` from
  which every PRNG key is derived;
* it writes its results with :func:`mergetheory._io.save_results` and does no work at
  import time.

Global JAX flags are set by :func:`configure_jax` (called by ``run_all`` and by each
script's ``__main__`` block), never by the library.
"""

from __future__ import annotations

import os

# Before NumPy / SciPy / JAX load OpenBLAS: one BLAS thread, so LAPACK calls (SVD, QR)
# do not fight XLA's thread pool (measured 20-40x slower SVDs on 2 cores otherwise).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS_DIR = REPO_ROOT / "results"


def configure_jax(*, x64: bool = True) -> None:
    """Set the global JAX flags the experiments run under (x64 by default)."""
    import jax

    jax.config.update("jax_enable_x64", x64)


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
    return parser
