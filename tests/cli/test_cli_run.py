"""``mergetheory run PATH.py ARGS``: a user's module's main gets ARGS; bad paths exit 2."""

from mergetheory.cli import main

MODULE = """
import sys
from pathlib import Path

import helper_next_to_it  # the module's folder is importable, as with `python PATH.py`


def main(argv):
    Path(argv[argv.index("--out") + 1]).write_text(" ".join(argv) + helper_next_to_it.TAG)
    return 3 if "--fail" in argv else 0
"""


def _module(tmp_path):
    (tmp_path / "helper_next_to_it.py").write_text("TAG = '!'\n")
    path = tmp_path / "my_experiment.py"
    path.write_text(MODULE)
    return path


def test_runs_main_with_the_remaining_arguments(tmp_path):
    out = tmp_path / "out.txt"
    assert main(["run", str(_module(tmp_path)), "--quick", "--out", str(out)]) == 0
    assert out.read_text() == f"--quick --out {out}!"
    assert main(["run", str(_module(tmp_path)), "--fail", "--out", str(out)]) == 3


def test_bad_paths_exit_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "absent.py")]) == 2
    assert "absent.py: no such Python file" in capsys.readouterr().err
    (tmp_path / "no_main.py").write_text("X = 1\n")
    assert main(["run", str(tmp_path / "no_main.py")]) == 2
    assert "no_main.py: defines no main(argv) function" in capsys.readouterr().err
