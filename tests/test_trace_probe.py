"""The traced-once probe of conftest catches a function that retraces on every call."""

import jax
import jax.numpy as jnp
import pytest


def test_probe_passes_a_jitted_function(assert_traced_once):
    f = jax.jit(lambda x: x + 1)
    out = assert_traced_once(f, jnp.ones(3), expect_first_trace=True)
    assert float(out[0]) == 2.0


def test_probe_catches_a_retrace(assert_traced_once):
    def retraces(x):
        return jax.jit(lambda y: y * 2)(x)  # a new jitted function per call: traces every time

    with pytest.raises(AssertionError, match="second call traced"):
        assert_traced_once(retraces, jnp.ones(3))
