"""Test configuration: x64, strict dtype and rank promotion, headless matplotlib, a fixed key.

Global JAX flags are set here (and by scripts), never on import of the library.
"""

import os

# 8 forced host devices for the sharding tests; a low XLA backend optimisation level because
# the suite's time is dominated by compiling many small programs (measured: about 1/3 less
# CPU time, same results).
_flags = os.environ.get("XLA_FLAGS", "")
for _flag in ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0"):
    if _flag.split("=")[0] not in _flags:
        _flags = f"{_flags} {_flag}".strip()
os.environ["XLA_FLAGS"] = _flags
# JAX's CPU SVD / QR / eigh call SciPy's OpenBLAS, whose own thread pool fights XLA's on a
# 2-core machine (measured: one 1000x1000 SVD 7-15 s with default threads, 0.36 s with 1).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# One JAX persistent compilation cache per test session, in a new temporary folder (so every
# session starts empty, as in a fresh clone): the `make test` workers (pytest-xdist) and the
# tests' subprocesses (CLI, README, docs/extending.md) inherit it through the environment and
# load the programs another process compiled instead of compiling them again. A loaded
# program is the one compiled (same results); compile counts still count it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mergetheory-jax-cache-")
    os.environ["MERGETHEORY_TEST_JAX_CACHE_OWNER"] = str(os.getpid())  # removes it at the end
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
# (also here: a pytest plugin may have imported JAX before the environment above was set)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)
jax.config.update(
    "jax_persistent_cache_min_entry_size_bytes",
    int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]),
)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import pytest  # noqa: E402


@pytest.fixture
def key():
    """The fixed PRNG key every test derives its randomness from."""
    return jax.random.key(20261123)


# --- traced-once probe -------------------------------------------------------------------
# JAX records one '/jax/core/compile/jaxpr_trace_duration' event per trace of a jitted
# function (public `jax.monitoring` API); mergetheory.testing.count_traces counts them, so a
# call's traces are known without probing any function's private cache.
from mergetheory.testing import count_traces  # noqa: E402


@pytest.fixture
def assert_traced_once():
    """``assert_traced_once(fn, *args, **kw)``: call twice; the second call must trace nothing.

    Returns the second result. Fails if the first call traced nothing either when
    ``fn`` is expected to be jitted (pass ``expect_first_trace=False`` to allow a warm cache).
    """

    def check(fn, *args, expect_first_trace=False, **kwargs):
        _, first = count_traces(fn, *args, **kwargs)
        if expect_first_trace:
            assert first > 0, "the first call traced nothing: is the function jitted?"
        out, second = count_traces(fn, *args, **kwargs)
        assert second == 0, f"the second call traced {second} more program(s)"
        return out

    return check


def save_hf_folder(folder, tensors, shards=2):
    """A Hugging Face model folder: config.json + ``shards`` safetensors files + index."""
    import json

    from mergetheory.io import save_safetensors

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "toy"}))
    names = sorted(tensors)
    weight_map = {}
    for k in range(shards):
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[k::shards]}
        save_safetensors(folder / fname, part)
        weight_map.update(dict.fromkeys(part, fname))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


@pytest.fixture
def hf_pool():
    """``hf_pool(tmp, num=4, seed=1) -> (base dict, expert dicts, taus [num, D])``.

    Writes ``tmp/base`` and ``tmp/expert{i}`` as sharded HF folders (float32); ``taus``
    are the flattened task vectors (float64, tensors in sorted name order).
    """
    import numpy as np

    def make(tmp, num=4, seed=1):
        rng = np.random.default_rng(seed)
        shapes = {
            "embed.weight": (5, 4),
            "layers.0.w": (4, 4),
            "layers.0.b": (4,),
            "head.w": (4, 3),
        }
        base = {n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()}
        save_hf_folder(tmp / "base", base)
        experts, taus = [], []
        for i in range(num):
            ex = {
                n: (v + 0.1 * rng.normal(size=v.shape)).astype(np.float32) for n, v in base.items()
            }
            save_hf_folder(tmp / f"expert{i}", ex)
            experts.append(ex)
            taus.append(
                np.concatenate([(ex[n].astype(np.float64) - base[n]).ravel() for n in sorted(ex)])
            )
        return base, experts, np.stack(taus)

    return make


def pytest_unconfigure(config):
    """Remove the session's compilation cache (in the process that created it)."""
    if os.environ.get("MERGETHEORY_TEST_JAX_CACHE_OWNER") == str(os.getpid()):
        import shutil

        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
