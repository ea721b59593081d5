"""Run docs/extending.md literally, from an empty folder outside the repository.

Every block whose first line is ``# file: PATH`` is written to ``PATH`` (that line left
out) in a temporary folder; every ``$ command`` of a ``console`` block is then run there,
in order, with the shell. The environment has only the ``mergetheory`` package importable
(``PYTHONPATH`` holds a folder with a link to this checkout's ``mergetheory/`` and nothing
else of the repository) and ``PATH`` starts with a folder holding ``python``,
``mergetheory`` (the console script) and ``pip``. That ``pip install DIR`` installs into the
link folder: with pip itself (``--no-index --no-deps --no-build-isolation --target``) when
this Python can build a wheel offline (``wheel`` importable, which the ``test`` extra
installs, or setuptools >= 70.1), else (no network here to fetch it) by copying the
project's ``py-modules`` and writing its ``*.dist-info`` (METADATA, entry_points.txt) from
its ``pyproject.toml``, which is what an install puts there for ``importlib.metadata``.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mergetheory.merge import MERGE_OPERATORS
from mergetheory.testing import CHECKS

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "extending.md"
EXAMPLE = ROOT / "examples" / "merge_plugin"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
_FILE = "# file: "

_PIP = '''#!{python}
"""``pip install DIR`` into {site} (see tests/test_extending_doc.py)."""
import os, shutil, subprocess, sys, tomllib
from pathlib import Path

BUILD_PATH = {build_path!r}
args = sys.argv[1:]
if args[:1] != ["install"] or len(args) != 2:
    sys.exit(f"this test's pip only does 'pip install DIR', got {{args}}")
project, site = Path(args[1]), Path({site!r})
if BUILD_PATH is not None:
    path = [p for p in (os.environ.get("PYTHONPATH"), BUILD_PATH) if p]
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
           "--no-build-isolation", "--target", str(site), str(project.resolve())]
    sys.exit(subprocess.call(cmd, env={{**os.environ, "PYTHONPATH": os.pathsep.join(path)}}))
meta = tomllib.loads((project / "pyproject.toml").read_text())
proj = meta["project"]
for module in meta["tool"]["setuptools"]["py-modules"]:
    shutil.copy(project / f"{{module}}.py", site / f"{{module}}.py")
info = site / f"{{proj['name'].replace('-', '_')}}-{{proj['version']}}.dist-info"
info.mkdir()
(info / "METADATA").write_text(
    f"Metadata-Version: 2.1\\nName: {{proj['name']}}\\nVersion: {{proj['version']}}\\n")
lines = []
for group, entries in proj.get("entry-points", {{}}).items():
    lines.append(f"[{{group}}]")
    lines += [f"{{name}} = {{value}}" for name, value in entries.items()]
(info / "entry_points.txt").write_text("\\n".join(lines) + "\\n")
print(f"Successfully installed {{proj['name']}}-{{proj['version']}} (stand-in: no wheel here)")
'''


def wheel_builder() -> str | None:
    """Where ``pip install --no-build-isolation DIR`` finds ``bdist_wheel`` offline, or None.

    The folder holding the ``wheel`` package (added to the build's ``PYTHONPATH``), or ``""``
    when setuptools >= 70.1 has ``bdist_wheel`` itself.
    """
    import importlib.util

    spec = importlib.util.find_spec("wheel")
    if spec is not None and spec.origin:
        return str(Path(spec.origin).parent.parent)
    try:
        from setuptools.command import bdist_wheel  # noqa: F401  (setuptools >= 70.1)
    except ImportError:
        return None
    return ""


def can_build_wheels() -> bool:
    return wheel_builder() is not None


def _blocks() -> list[tuple[str, str]]:
    return _BLOCK.findall(DOC.read_text())


def _files() -> dict[str, str]:
    out = {}
    for _, body in _blocks():
        first, _, rest = body.partition("\n")
        if first.startswith(_FILE):
            out[first[len(_FILE) :].strip()] = rest
    return out


def _commands() -> list[str]:
    return [
        line[2:].strip()
        for lang, body in _blocks()
        if lang == "console"
        for line in body.splitlines()
        if line.startswith("$ ")
    ]


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture(scope="module")
def doc_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("extending_doc")
    assert ROOT not in root.parents
    work, site, bin_dir = root / "work", root / "site", root / "bin"
    for d in (work, site, bin_dir):
        d.mkdir()
    (site / "mergetheory").symlink_to(ROOT / "mergetheory", target_is_directory=True)
    py = sys.executable
    _executable(bin_dir / "python", f'#!/bin/sh\nexec "{py}" "$@"\n')
    _executable(bin_dir / "mergetheory", f'#!/bin/sh\nexec "{py}" -m mergetheory.cli "$@"\n')
    _executable(bin_dir / "pip", _PIP.format(python=py, site=str(site), build_path=wheel_builder()))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(
        PYTHONPATH=str(site),
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        OPENBLAS_NUM_THREADS="1",
        MPLBACKEND="Agg",
    )
    for name, text in _files().items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    outputs = {}
    for cmd in _commands():
        proc = subprocess.run(
            cmd, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, f"$ {cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        outputs[cmd] = proc.stdout
    return work, env, outputs


def test_page_has_files_and_commands():
    files, commands = _files(), _commands()
    for name in ("my_median/merge_median.py", "my_median/pyproject.toml", "test_my_median.py"):
        assert name in files
    assert "orthonormal_hull.py" in files and "fig_orthonormal_hull.py" in files
    assert any(c.startswith("pip install") for c in commands)
    assert any(c.startswith("mergetheory merge --operator my_median") for c in commands)
    assert any("pytest" in c for c in commands)
    assert any(c.startswith("mergetheory run median_width") for c in commands)
    assert any(c.startswith("mergetheory analyze") and "my_median" in c for c in commands)


def test_example_plugin_is_the_documented_one():
    files = _files()
    for name in ("merge_median.py", "median_width.py", "pyproject.toml"):
        assert (EXAMPLE / name).read_text() == files[f"my_median/{name}"], name
    assert sorted(p.name for p in EXAMPLE.iterdir() if p.is_file()) == [
        "median_width.py",
        "merge_median.py",
        "pyproject.toml",
    ]


def test_only_the_package_is_importable(doc_env):
    work, env, _ = doc_env
    # (./figures is the doc's own output folder: only the repository's copies must be absent)
    probe = textwrap.dedent(
        f"""
        import importlib.util, pathlib, mergetheory
        print(pathlib.Path(mergetheory.__file__).resolve().parent)
        found = []
        for m in ("experiments", "figures", "paper"):
            spec = importlib.util.find_spec(m)
            places = [] if spec is None else list(spec.submodule_search_locations or [spec.origin])
            if any(str(pathlib.Path(p).resolve()).startswith({str(ROOT)!r}) for p in places):
                found.append(m)
        print(found)
        """
    )
    out = subprocess.run(
        ["python", "-c", probe], cwd=work, env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == [str(ROOT / "mergetheory"), "[]"]


def test_plugin_installed_with_pip_when_it_can_build(doc_env):
    work, _, outputs = doc_env
    (out,) = [v for k, v in outputs.items() if k.startswith("pip install")]
    assert "Successfully installed my-median-merge-0.1.0" in out
    # the real pip whenever this Python can build a wheel offline (the test extra has wheel)
    assert ("stand-in" in out) is not can_build_wheels()
    site = work.parent / "site"
    (info,) = site.glob("my_median_merge-0.1.0.dist-info")
    entries = (info / "entry_points.txt").read_text()
    assert "my_median = merge_median:MEDIAN" in entries
    assert "median_width = median_width:HYPOTHESIS" in entries


def test_cli_merged_with_the_plugin(doc_env):
    work, _, _ = doc_env
    experts = [np.load(work / f"e{i}.npz") for i in (1, 2, 3)]
    with np.load(work / "merged.npz") as merged:
        for k in ("w", "b"):
            want = 2.0 * np.median(np.stack([e[k] for e in experts]), axis=0)
            np.testing.assert_allclose(merged[k], want, rtol=1e-12)


def test_analyze_compared_the_plugin(doc_env):
    work, _, _ = doc_env
    report = json.loads((work / "median_report" / "analysis.json").read_text())
    ops = report["coverage"]["operators"]
    assert set(ops) == {"rht", "ties", "dare_linear", "my_median"}
    # the median of one expert is that expert: the merged set is the experts' hull
    assert abs(ops["my_median"]["log_total_gain"]) < 1e-9
    assert "| my_median |" in (work / "median_report" / "analysis.md").read_text()


def test_conformance_suite_ran_under_pytest(doc_env):
    _, _, outputs = doc_env
    (out,) = [v for k, v in outputs.items() if "pytest" in k]
    passed = int(re.search(r"(\d+) passed", out).group(1))
    skipped = re.search(r"(\d+) skipped", out)
    assert passed + (int(skipped.group(1)) if skipped else 0) == len(CHECKS) + 1
    assert "failed" not in out


def test_register_demo_caught_the_unchecked_operator(doc_env):
    _, _, outputs = doc_env
    out = outputs["python register_demo.py"]
    assert "operator trimmed_mean: bad_input_rejected failed" in out
    assert "width" in out


def test_hypothesis_experiment_figure_and_report(doc_env):
    work, _, _ = doc_env
    meta = json.loads((work / "results" / "orthonormal_hull.json").read_text())
    summary = meta.get("summary") or meta["config"]["summary"]
    assert summary["verdict"] == "holds"
    assert summary["num_experts"] == 6 and summary["max_abs_z"] < 5
    with np.load(work / "results" / "orthonormal_hull.npz") as arrays:
        assert len(arrays["width"]) == len(arrays["exact"]) == 6
        with np.load(work / "results_again" / "orthonormal_hull.npz") as again:  # mergetheory run
            np.testing.assert_array_equal(again["width"], arrays["width"])
    assert (work / "figures" / "fig_orthonormal_hull.png").is_file()
    assert (work / "figures" / "fig_orthonormal_hull.pdf").is_file()
    report = (work / "report.md").read_text()
    assert "{{" not in report and "**Verdict.** holds" in report
    # the registered hypothesis (`mergetheory run register_orthonormal.py`): figure, section
    assert (work / "results_again" / "figures" / "fig_orthonormal_hull.png").is_file()
    section = (work / "results_again" / "orthonormal_hull.md").read_text()
    assert "{{" not in section and "**Verdict.** holds" in section


def test_plugin_hypothesis_ran_by_name(doc_env):
    work, _, outputs = doc_env
    assert (
        "hypothesis median_width:"
        in outputs["mergetheory run median_width --quick --out-dir plugin_results"]
    )
    out = work / "plugin_results"
    meta = json.loads((out / "median_width.json").read_text())
    summary = meta.get("summary") or meta["config"]["summary"]
    assert summary["verdict"] == "holds" and summary["abs_z"] < 5
    assert (out / "figures" / "fig_median_width.png").is_file()
    assert (out / "figures" / "fig_median_width.pdf").is_file()
    section = (out / "median_width.md").read_text()
    assert "{{" not in section and "**Verdict.** holds" in section


def test_global_registry_untouched():
    assert "my_median" not in MERGE_OPERATORS and "trimmed_mean" not in MERGE_OPERATORS
