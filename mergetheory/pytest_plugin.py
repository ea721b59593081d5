"""pytest plugin: the conformance suite of :mod:`mergetheory.testing` as fixtures and a marker.

Installed with the package (entry point ``pytest11``), or named explicitly with
``pytest -p mergetheory.pytest_plugin``. It imports JAX only when a test uses it.

* ``mergetheory_conformance``: a fixture returning
  :func:`mergetheory.testing.check_operator` (run every check on an operator at once)::

      def test_my_op(mergetheory_conformance):
          mergetheory_conformance("my_op")

* ``@pytest.mark.mergetheory_operators("my_op", ...)`` with the ``mergetheory_check``
  fixture: one test per (operator, check); a check whose property is not claimed is
  skipped::

      @pytest.mark.mergetheory_operators("my_op")
      def test_my_op_conforms(mergetheory_check):
          mergetheory_check()
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

MARKER = "mergetheory_operators"


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(*names): run mergetheory's conformance checks on these operators "
        "(with the mergetheory_check fixture)",
    )


def pytest_generate_tests(metafunc: Any) -> None:
    if "mergetheory_check" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker(MARKER)
    if marker is None or not marker.args:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid}: the mergetheory_check fixture needs "
            f"@pytest.mark.{MARKER}('operator_name', ...)"
        )
    from mergetheory.testing import operator_conformance_cases

    cases = operator_conformance_cases(list(marker.args))
    metafunc.parametrize(
        "mergetheory_check", cases, indirect=True, ids=[f"{n}-{c}" for n, c in cases]
    )


@pytest.fixture
def mergetheory_check(request: Any) -> Any:
    """``fn()`` running one (operator, check) case of the test's marker."""
    from mergetheory.testing import run_check

    name, check = request.param
    return functools.partial(run_check, name, check)


@pytest.fixture
def mergetheory_conformance() -> Any:
    """:func:`mergetheory.testing.check_operator`."""
    from mergetheory.testing import check_operator

    return check_operator
