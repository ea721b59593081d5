"""Shared figure style, argument parser and atomic PNG + PDF saving.

These are :mod:`mergetheory.figure` with the repository's default folders (``results/``
and ``figures/out/``). Importing this module selects matplotlib's non-interactive ``Agg``
backend (figures are files, never windows).
"""

from __future__ import annotations

import argparse
import functools

from figures import DEFAULT_OUT_DIR, DEFAULT_RESULTS_DIR
from mergetheory.figure import STYLE, atomic_savefig, plt, rho_colors
from mergetheory.figure import make_parser as _make_parser
from mergetheory.figure import run_figure as _run_figure

__all__ = ["STYLE", "atomic_savefig", "make_parser", "plt", "rho_colors", "run_figure"]


def make_parser(description: str) -> argparse.ArgumentParser:
    """Argument parser with ``--results-dir`` and ``--out-dir`` (the repository's folders)."""
    return _make_parser(description, results_dir=DEFAULT_RESULTS_DIR, out_dir=DEFAULT_OUT_DIR)


# the ``main`` of a one-results figure script, with the repository's default folders
run_figure = functools.partial(
    _run_figure, results_dir=DEFAULT_RESULTS_DIR, out_dir=DEFAULT_OUT_DIR
)
