"""Figures: ``fig_*.py`` modules that read results files only and write one figure each.

Contract for ``figures/fig_<name>.py`` (discovered by ``figures.run_all``):

* ``RESULTS: tuple[str, ...]``: the results stems it reads (``"diagnostics"`` for
  ``results/diagnostics.npz`` + ``.json``), checked before it runs;
* ``main(argv: list[str] | None = None) -> int`` accepting ``--results-dir`` and
  ``--out-dir`` (see :func:`figures._style.make_parser`), reading its data with
  :func:`mergetheory.io.load_results` and writing ``<out-dir>/fig_<name>.png`` + ``.pdf``
  with :func:`figures._style.atomic_savefig`.

No figure computes anything beyond light reshaping of saved arrays; drawing never lives
inside ``mergetheory/`` (only the shared style and saving helpers, :mod:`mergetheory.figure`,
which :mod:`figures._style` wraps with the repository's folders).
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS_DIR = REPO_ROOT / "results"
DEFAULT_OUT_DIR = REPO_ROOT / "figures" / "out"
