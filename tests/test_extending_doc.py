"""Execute the worked examples of docs/extending.md and check what the page claims.

The ```python blocks are run in order in one namespace, from a temporary working directory
(the examples write below ``./example_out``). The new operator is then run through the
table-driven registry checks of ``tests/merge/test_registry.py`` against a *copy* of the
registry (patched into that module only for the duration of the test), so the global
``MERGE_OPERATORS`` is never mutated.
"""

import importlib.util
import inspect
import re
from pathlib import Path

import pytest

from mergetheory.merge import MERGE_OPERATORS

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "extending.md"
REGISTRY_TESTS = ROOT / "tests" / "merge" / "test_registry.py"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

# the registry checks the page promises for an operator claiming what the median claims
_MUST_RUN = {
    "test_structure_shape_dtype_float32",
    "test_eager_equals_jit_with_traced_hparams",
    "test_vmap_over_keys",
    "test_vmap_over_continuous_hparams",
    "test_permutation_invariance",
    "test_identity_at_one_task",
    "test_scale_equivariance",
    "test_stochasticity",
    "test_registry_records_are_consistent",
}


def _blocks() -> list[str]:
    return _BLOCK.findall(DOC.read_text())


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    """The namespace after executing every block, and the directory it ran in."""
    workdir = tmp_path_factory.mktemp("extending_doc")
    namespace = {"__name__": "extending_doc"}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        mp.syspath_prepend(str(ROOT))  # experiments/, figures/, paper/ from the checkout
        for i, code in enumerate(_blocks()):
            exec(compile(code, f"{DOC.name} [python block {i + 1}]", "exec"), namespace)
    return namespace, workdir


def test_page_has_the_worked_examples():
    blocks = _blocks()
    assert len(blocks) >= 6
    text = "\n".join(blocks)
    for name in ("MergeOperator(", "check_orthonormal_hull", "save_results", "render_section"):
        assert name in text


def test_examples_run_and_write_their_outputs(doc):
    namespace, workdir = doc
    out = workdir / "example_out"
    assert (out / "results" / "orthonormal_hull.npz").is_file()
    assert (out / "results" / "orthonormal_hull.json").is_file()
    assert (out / "figures" / "fig_orthonormal_hull.png").is_file()
    assert "{{" not in namespace["section"]


def test_new_hypothesis_check_returns_a_verdict(doc):
    namespace, _ = doc
    ev = namespace["evidence"]
    assert ev.verdict == "holds"
    assert len(ev.width) == len(ev.exact) == 6
    assert ev.max_abs_z < 5


def test_new_operator_passes_the_registry_table_tests(doc, key, monkeypatch):
    namespace, _ = doc
    registry = namespace["registry"]
    assert set(registry) == set(MERGE_OPERATORS) | {"median"}
    assert "median" not in MERGE_OPERATORS

    spec = importlib.util.spec_from_file_location("_registry_table_tests", REGISTRY_TESTS)
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    monkeypatch.setattr(table, "MERGE_OPERATORS", registry)  # the copy, for this module only

    ran, skipped = set(), set()
    for fname, fn in sorted(vars(table).items()):
        if not (fname.startswith("test_") and callable(fn)):
            continue
        params = inspect.signature(fn).parameters
        kwargs = {"name": "median", "key": key}
        try:
            fn(**{k: v for k, v in kwargs.items() if k in params})
        except pytest.skip.Exception:
            skipped.add(fname)
        else:
            ran.add(fname)
    assert _MUST_RUN <= ran, _MUST_RUN - ran
    assert "test_linearity" in skipped  # not claimed by the median


def test_global_registry_untouched_afterwards():
    assert "median" not in MERGE_OPERATORS
