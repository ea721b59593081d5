"""Registering operators from outside the library: register_operator and entry points.

Entry-point discovery is tested in process by putting a temporary ``*.dist-info`` folder
(``METADATA`` + ``entry_points.txt``) and its module on ``sys.path``: that is where
``importlib.metadata`` looks for installed distributions. The CLI test runs
``python -m mergetheory.cli merge`` with that folder on ``PYTHONPATH``.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from mergetheory.merge import (
    BUILTIN_OPERATOR_NAMES,
    MERGE_OPERATORS,
    PluginError,
    get_operator,
    load_plugins,
    operator_names,
    register_operator,
    unregister_operator,
)
from mergetheory.testing import check_operator

REPO = Path(__file__).resolve().parents[2]

PLUGIN_MODULE = """
import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from mergetheory.merge import MergeOperator
from mergetheory.tree import validate_task_vectors


@jax.jit
def _core(task_vectors, scale):
    return jtu.tree_map(lambda x: scale * jnp.median(x, axis=0), task_vectors)


def median(task_vectors, key, *, scale=1.0):
    validate_task_vectors(task_vectors)
    return _core(task_vectors, scale)


MEDIAN = MergeOperator(
    fn=median,
    has_weights=False,
    default_hparams={"scale": 1.0},
    continuous_hparams=("scale",),
    description="coordinate-wise median of the task vectors, times scale",
)
"""


def _mean(task_vectors, key, *, weights=None, scale=1.0):
    return {k: scale * jnp.mean(v, axis=0) for k, v in task_vectors.items()}


def _make_plugin(folder: Path, op_name: str, module: str, target: str = "MEDIAN") -> Path:
    (folder / f"{module}.py").write_text(PLUGIN_MODULE)
    info = folder / f"{module}_dist-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}-dist\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[mergetheory.operators]\n{op_name} = {module}:{target}\n"
    )
    return folder


@pytest.fixture
def cleanup():
    names = []
    yield names
    for name in names:
        MERGE_OPERATORS.pop(name, None)


def test_register_then_unregister(cleanup):
    cleanup.append("plugin_mean")
    op = register_operator(
        "plugin_mean",
        _mean,
        linear=True,
        default_hparams={"scale": 1.0},
        continuous_hparams=["scale"],
        description="mean",
    )
    assert MERGE_OPERATORS["plugin_mean"] is op is get_operator("plugin_mean")
    assert op.continuous_hparams == ("scale",) and op.linear
    assert "plugin_mean" in operator_names()
    unregister_operator("plugin_mean")
    assert "plugin_mean" not in MERGE_OPERATORS


def test_name_clash_is_an_error(cleanup):
    with pytest.raises(PluginError, match="'ties' is already registered"):
        register_operator("ties", _mean, description="x")
    with pytest.raises(PluginError, match="built in and cannot be replaced"):
        register_operator("ties", _mean, replace=True)
    cleanup.append("plugin_twice")
    register_operator("plugin_twice", _mean)
    with pytest.raises(PluginError, match="'plugin_twice' is already registered"):
        register_operator("plugin_twice", _mean)
    register_operator("plugin_twice", _mean, replace=True, linear=True)
    assert MERGE_OPERATORS["plugin_twice"].linear
    with pytest.raises(PluginError, match="built in and cannot be removed"):
        unregister_operator("average")
    assert set(BUILTIN_OPERATOR_NAMES) <= set(MERGE_OPERATORS)


@pytest.mark.parametrize(
    "fn, claims, message",
    [
        (lambda key: key, {}, "must take the data first and the PRNG key second"),
        (lambda tv, key, scale: tv, {}, r"hyperparameter\(s\) \['scale'\] must be keyword"),
        (lambda tv, key, *, weights=None: tv, {"default_hparams": {"scale": 1.0}}, "'scale'"),
        (lambda tv, key, *, scale=1.0: tv, {}, "has_weights=False"),
        (_mean, {"linaer": True}, r"unknown claim\(s\) \['linaer'\]; known: linear"),
        ("not a function", {}, "fn must be callable"),
    ],
)
def test_bad_registrations_are_clear_errors(fn, claims, message):
    with pytest.raises(PluginError, match=message):
        register_operator("plugin_bad", fn, **claims)
    assert "plugin_bad" not in MERGE_OPERATORS


def test_bad_name_is_an_error():
    with pytest.raises(PluginError, match="Python identifier"):
        register_operator("my op", _mean)


def test_every_builtin_passes_the_registration_checks():
    from mergetheory.merge.plugins import KNOWN_CLAIMS

    for name in BUILTIN_OPERATOR_NAMES:
        op = MERGE_OPERATORS[name]
        claims = {k: getattr(op, k) for k in KNOWN_CLAIMS}
        register_operator("plugin_copy", op.fn, **claims)
        unregister_operator("plugin_copy")


def test_entry_point_plugin_is_discovered_and_conforms(tmp_path, monkeypatch, cleanup):
    cleanup.append("ep_median")
    _make_plugin(tmp_path, "ep_median", "ep_median_ops")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "ep_median" not in MERGE_OPERATORS
    assert "ep_median" in load_plugins()
    assert load_plugins() == []  # once
    op = get_operator("ep_median")
    tv = {"w": jnp.asarray([[1.0, -2.0], [3.0, 0.0], [2.0, 5.0]])}
    np.testing.assert_array_equal(op.fn(tv, None)["w"], [2.0, 0.0])
    ran = check_operator("ep_median")
    assert {"traced_once", "scale_equivariance", "permutation_invariance"} <= set(ran)


def test_broken_entry_point_names_itself(tmp_path, monkeypatch, cleanup):
    cleanup.append("ep_missing")
    _make_plugin(tmp_path, "ep_missing", "ep_missing_ops", target="NO_SUCH_NAME")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="entry point ep_missing = 'ep_missing_ops:NO_SUCH"):
        load_plugins()


def test_cli_merges_with_a_plugin_operator(tmp_path):
    plugin = tmp_path / "site"
    plugin.mkdir()
    _make_plugin(plugin, "cli_median", "cli_median_ops")
    inputs = []
    for i, w in enumerate(([1.0, -2.0], [3.0, 0.0], [2.0, 5.0])):
        inputs.append(str(tmp_path / f"e{i}.npz"))
        np.savez(inputs[-1], w=np.asarray(w))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), str(REPO)])}
    run = lambda *argv: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "mergetheory.cli", *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    helped = run("merge", "--help")
    assert helped.returncode == 0 and "cli_median" in helped.stdout
    out = tmp_path / "merged.npz"
    proc = run("merge", "--operator", "cli_median", "--scale", "2", "--out", str(out), *inputs)
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as merged:
        np.testing.assert_array_equal(merged["w"], [4.0, 0.0])
    bad = run("merge", "--operator", "no_such_op", "--out", str(out), *inputs)
    assert bad.returncode == 2 and "no_such_op" in bad.stderr
