"""Test configuration: x64, strict dtype promotion, headless matplotlib, a fixed key.

Global JAX flags are set here (and by scripts), never on import of the library.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import pytest  # noqa: E402


@pytest.fixture
def key():
    """The fixed PRNG key every test derives its randomness from."""
    return jax.random.key(20261123)
