"""The parametric heavy-tailed RHT operator (a hypothesis) against exact facts."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from mergetheory.cli import main
from mergetheory.merge import average, rht_heavy_tailed
from mergetheory.theory import rht as theory_rht


def _tv(seed=0, num=4):
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.normal(size=(num, 6, 5))),
        "b": jnp.asarray(rng.normal(size=(num, 5))),
    }


def test_nu_inf_is_the_weighted_average():
    tv = _tv()
    w = jnp.asarray([1.0, 2.0, 0.5, 3.0])
    got = rht_heavy_tailed(tv, jr.key(0), nu=jnp.inf, weights=w, scale=0.5)
    want = average(tv, jr.key(0), weights=w)
    for k in tv:
        np.testing.assert_allclose(got[k], 0.5 * want[k], rtol=1e-13)


def test_one_expert_keeps_its_norm_and_gets_student_t_tails():
    x = jr.normal(jr.key(1), (1, 400_000))
    nu = 12.0
    y = np.asarray(rht_heavy_tailed({"x": x}, jr.key(2), nu=nu, scale=2.0)["x"])
    np.testing.assert_allclose(np.linalg.norm(y), 2.0 * float(jnp.linalg.norm(x)), rtol=1e-12)
    # Gaussian * sqrt(nu / chi2_nu) is Student-t_nu: kurtosis 3 + 6 / (nu - 4)
    z = y / np.sqrt(np.mean(y * y))
    kurt = np.mean(z**4)
    se = np.std(z**4) / np.sqrt(z.size)
    assert abs(kurt - (3 + 6 / (nu - 4))) < 5 * se, (kurt, se)


def test_theory_uses_the_same_reparameterization():
    from mergetheory.merge import heavy_tailed_reparameterize

    assert theory_rht.heavy_tailed_reparameterize is heavy_tailed_reparameterize
    assert theory_rht.REPARAMETERIZATIONS["heavy_tailed"][0] is heavy_tailed_reparameterize


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_bad_nu(bad):
    with pytest.raises(ValueError, match="nu must be > 0"):
        rht_heavy_tailed(_tv(), jr.key(0), nu=bad)


def test_cli_at_nu_inf_averages(tmp_path, capsys):
    rng = np.random.default_rng(3)
    xs = rng.normal(size=(3, 4, 2))
    paths = []
    for i, x in enumerate(xs):
        np.savez(tmp_path / f"e{i}.npz", w=x)
        paths.append(str(tmp_path / f"e{i}.npz"))
    argv = ["merge", "--operator", "rht_heavy_tailed", "--hparam", "nu=inf"]
    assert main([*argv, "--out", str(tmp_path / "m.npz"), *paths]) == 0, capsys.readouterr().err
    with np.load(tmp_path / "m.npz") as merged:
        np.testing.assert_allclose(merged["w"], xs.mean(axis=0), rtol=1e-13)
