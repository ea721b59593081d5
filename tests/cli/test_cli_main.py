"""The top-level ``mergetheory`` command: help and version without JAX, the subcommand table."""

import subprocess
import sys
from pathlib import Path

import pytest

from mergetheory import __version__
from mergetheory.cli import SUBCOMMANDS
from mergetheory.cli.merge import BUILTIN_OPERATOR_NAMES
from mergetheory.merge import BUILTIN_OPERATOR_NAMES as LIBRARY_BUILTINS
from mergetheory.merge import MERGE_OPERATORS

REPO = Path(__file__).resolve().parents[2]

_PARSE_ONLY = """
import sys
from mergetheory.cli import main
rc = main(sys.argv[1:])
print("RC", rc, "JAX", "jax" in sys.modules)
"""


@pytest.mark.parametrize(
    "argv", [["--help"], ["--version"], *[[name, "--help"] for name in sorted(SUBCOMMANDS)]]
)
def test_help_and_version_do_not_import_jax(argv):
    proc = subprocess.run(
        [sys.executable, "-c", _PARSE_ONLY, *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "RC 0 JAX False"
    if argv == ["--version"]:
        assert proc.stdout.splitlines()[0] == f"mergetheory {__version__}"
    else:
        assert "usage: mergetheory" in proc.stdout


def test_operator_names_match_the_registry():
    # the CLI lists the operators without importing JAX: the list must follow the registry
    assert list(BUILTIN_OPERATOR_NAMES) == sorted(MERGE_OPERATORS)
    assert BUILTIN_OPERATOR_NAMES == LIBRARY_BUILTINS


def test_operator_hparams_match_the_registry():
    # `merge --help` lists each operator's hyperparameters and defaults without importing
    # JAX: the static table must equal the registry's defaults and the signatures
    import inspect

    from mergetheory.cli.merge import OPERATOR_HPARAMS

    for name, op in MERGE_OPERATORS.items():
        want = []
        for p in inspect.signature(op.fn).parameters.values():
            if p.kind != p.KEYWORD_ONLY or p.name == "weights":
                continue
            default = op.default_hparams.get(p.name, p.default)
            want.append((p.name, "required" if default is p.empty else repr(default)))
        assert OPERATOR_HPARAMS[name] == tuple(want), name


def test_merge_help_lists_hyperparameters(capsys):
    from mergetheory.cli import main

    assert main(["merge", "--help"]) == 0
    out = capsys.readouterr().out
    assert "ties: density=0.2, scale=1.0, trim='tensor'" in out
    assert "base_knowledge_weighted: base_accuracy=required" in out


def test_streamed_operators_match_the_registry(capsys):
    # `merge --help` marks the operators streamed tensor by tensor without importing JAX
    from mergetheory.cli import main
    from mergetheory.cli.merge_stream import STREAMED_OPERATORS

    claims = {n: op.per_tensor for n, op in MERGE_OPERATORS.items() if n in BUILTIN_OPERATOR_NAMES}
    assert STREAMED_OPERATORS == {n: dict(c) for n, c in claims.items() if c is not None}
    assert main(["merge", "--help"]) == 0
    out = capsys.readouterr().out
    assert "ties: density=0.2," in out and "[streamed with trim='tensor']" in out
    assert "dare_ties: density=0.5," in out and "[whole tree]" in out
