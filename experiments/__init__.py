"""Experiments: thin scripts, frozen config -> library calls -> ``results/<name>.npz + .json``.

Contract for a module ``experiments/<name>.py`` (discovered by ``experiments.run_all``):

* it defines ``main(argv: list[str] | None = None) -> int`` (0 on success), built on
  :func:`run_experiment` (hence :func:`make_parser`; :func:`experiment_main` builds it
  for a ``run(config, *, progress)``), so it accepts ``--quick`` (a small configuration
  for tests) and ``--out-dir DIR`` (default: the repository's ``results/``);
* its configuration is a frozen NamedTuple / dataclass holding one integer ``seed`` from
  which every PRNG key is derived;
* it writes its results with :func:`mergetheory.io.save_results` and does no work at
  import time.

The runner itself is :mod:`mergetheory.experiment` (so that experiments outside the
repository use the same one); this package adds the repository's default folders. Global
JAX flags are set by :func:`configure_jax`, which :func:`run_experiment` calls
first (so every experiment, run alone or by ``run_all``, runs under them), never by the
library.
"""

from __future__ import annotations

import os

# Before NumPy / SciPy / JAX load OpenBLAS: one BLAS thread, so LAPACK calls (SVD, QR)
# do not fight XLA's thread pool (measured 20-40x slower SVDs on 2 cores otherwise).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mergetheory.experiment import configure_jax as _configure_jax
from mergetheory.experiment import make_parser as _make_parser
from mergetheory.experiment import run_experiment as _run_experiment

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS_DIR = REPO_ROOT / "results"


COMPILE_CACHE_DIR = DEFAULT_RESULTS_DIR / ".jax_cache"
"""JAX's persistent compilation cache for experiments (``MERGETHEORY_COMPILE_CACHE=0`` or
``--no-compile-cache`` turns it off; ``MERGETHEORY_COMPILE_CACHE=/path`` moves it)."""


def configure_jax(*, x64: bool = True, compile_cache: bool = True) -> None:
    """:func:`mergetheory.experiment.configure_jax` with the cache in :data:`COMPILE_CACHE_DIR`."""
    _configure_jax(x64=x64, compile_cache=compile_cache, cache_dir=COMPILE_CACHE_DIR)


def make_parser(description: str) -> argparse.ArgumentParser:
    """:func:`mergetheory.experiment.make_parser` writing to the repository's ``results/``."""
    return _make_parser(description, default_out_dir=DEFAULT_RESULTS_DIR)


# the ``main`` of an experiment (:func:`mergetheory.experiment.run_experiment`): results go
# to the repository's ``results/`` unless ``--out-dir`` is given; the compilation cache is
# :data:`COMPILE_CACHE_DIR`
run_experiment = functools.partial(
    _run_experiment, default_out_dir=DEFAULT_RESULTS_DIR, cache_dir=COMPILE_CACHE_DIR
)


def experiment_main(
    name: str, doc: str | None, run: Callable[..., Any], config: Any, quick_config: Any
) -> Callable[[list[str] | None], int]:
    """The ``main(argv=None) -> int`` of an experiment whose ``run(config, *, progress)``.

    ``run`` returns ``arrays`` or ``(arrays, summary)``; ``--no-progress`` turns its
    progress bar off. Everything else is :data:`run_experiment`.

    Example:
      >>> main = experiment_main(NAME, __doc__, run, MyConfig(), QUICK_CONFIG)  # doctest: +SKIP
    """

    def main(argv: list[str] | None = None) -> int:
        """Command-line entry point (see the module docstring)."""
        return run_experiment(
            name,
            doc,
            lambda cfg, args: run(cfg, progress=not args.no_progress),
            config,
            quick_config,
            argv,
        )

    return main
