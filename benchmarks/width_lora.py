r"""Part (c) of ``benchmarks/width.py``: LoRA experts laid out like gemma-2-2b.

Run through ``python -m benchmarks.width --part lora_gemma`` (see that module's docstring
for the targets): the factored Gram pass, the width on its Gram matrix, the one-module
densified baseline, and the sampling of the factors against the Gram pass and against the
former ``jax.random.normal`` sampler.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any

from .timing import maxrss_bytes, rss_bytes, timeit

__all__ = ["part_lora_gemma"]


@functools.cache
def _threefry_draw() -> Callable[..., Any]:
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    @functools.partial(jax.jit, static_argnames=("shape",))
    def draw(k, scale, *, shape):
        return jr.normal(k, shape, jnp.float32) * scale

    return draw


def _threefry_lora_factors(key, shapes, num_tasks, *, scaling):
    """The LoRA sampler before issue 13: ``jax.random.normal`` (threefry) per module."""
    import jax.numpy as jnp
    import jax.random as jr

    from mergetheory import lora

    draw = _threefry_draw()
    out = {}
    for idx, (name, s) in enumerate(shapes.items()):
        lead = (num_tasks,) if s.num_layers is None else (s.num_layers, num_tasks)
        kb, ka = jr.split(jr.fold_in(key, idx))
        b = draw(kb, jnp.float32(s.rank**-0.5), shape=lead + (s.d_out, s.rank))
        a = draw(ka, jnp.float32(s.d_in**-0.5), shape=lead + (s.rank, s.d_in))
        out[name] = lora.LoraFactors(b, a, scaling)
    return out


def part_lora_gemma(quick: bool) -> dict[str, Any]:
    """Hull width of 10 rank-16 gemma-2-2b-shaped LoRA experts, from the factors."""
    import jax
    import jax.random as jr
    import numpy as np

    from mergetheory import lora
    from mergetheory.geometry import ConvexHull
    from mergetheory.tree import gram_matrix
    from mergetheory.width import gaussian_width

    num_experts, rank = 10, 16
    shapes = lora.gemma2_2b_lora_shapes(rank, stacked=True)
    if quick:
        shapes = {k: v._replace(num_layers=2) for k, v in shapes.items()}
    dense_per_expert, factored_per_expert = lora.lora_dense_size(shapes)

    rss0 = rss_bytes()
    t0 = time.perf_counter()
    factors = jax.block_until_ready(
        lora.sample_lora_factors(jr.key(0), shapes, num_experts, scaling=2.0)
    )
    sample_s = time.perf_counter() - t0
    rss_factors = rss_bytes()
    peak_before = maxrss_bytes()

    t0 = time.perf_counter()
    gram = jax.block_until_ready(lora.lora_gram_matrix(factors))
    gram_first = time.perf_counter() - t0
    gram_t = timeit(lambda: lora.lora_gram_matrix(factors), repeat=3, warmup=0)

    num_samples = 10**4
    key = jr.key(1)
    t0 = time.perf_counter()
    hull = ConvexHull.from_gram(gram)
    est = jax.block_until_ready(gaussian_width(key, hull, num_samples=num_samples))
    width_first = time.perf_counter() - t0
    width_t = timeit(
        lambda: gaussian_width(key, ConvexHull.from_gram(gram), num_samples=num_samples).mean,
        repeat=3,
        warmup=0,
    )
    peak_after = maxrss_bytes()

    # same-process baseline on one module: densify + dense Gram vs factored Gram
    name = "self_attn.q_proj"
    f0 = factors[name]
    one = {name: lora.LoraFactors(f0.B[0], f0.A[0], f0.scaling)}  # layer 0 only
    factors.clear()  # free the other modules before the dense baseline
    del f0
    dense_one = jax.jit(lambda f: gram_matrix(lora.densify(f)))
    fact_one = timeit(lambda: lora.lora_gram_matrix(one), repeat=3)
    dense_t = timeit(lambda: dense_one(one), repeat=3)
    g_f = np.asarray(lora.lora_gram_matrix(one), np.float64)
    g_d = np.asarray(dense_one(one), np.float64)

    # sampling, warm, against the sampler's former threefry draw (jax.random.normal per
    # module, the same keys), each result freed before the next draw
    def sample(fn):
        return lambda: list(fn(jr.key(0), shapes, num_experts, scaling=2.0).values())

    sample_warm = timeit(sample(lora.sample_lora_factors), repeat=1, warmup=0)
    t0 = time.perf_counter()
    jax.block_until_ready(sample(_threefry_lora_factors)())
    threefry_first = time.perf_counter() - t0
    threefry_warm = timeit(sample(_threefry_lora_factors), repeat=1, warmup=0)

    factored_bytes = num_experts * factored_per_expert * 4
    dense_bytes = num_experts * dense_per_expert * 4
    return {
        "layout": "gemma-2-2b, 26 layers x {q,k,v,o,gate,up,down}, stacked [L, T, ...]"
        + (" (quick: 2 layers)" if quick else ""),
        "num_experts": num_experts,
        "rank": rank,
        "dense_params_per_expert": dense_per_expert,
        "factored_params_per_expert": factored_per_expert,
        "dense_bytes_float32_all_experts": dense_bytes,
        "factored_bytes_float32_all_experts": factored_bytes,
        "loadavg_at_end": os.getloadavg(),
        "sample_factors_s": sample_s,
        "sample_factors_warm": sample_warm,
        "sample_over_gram": sample_warm["min_s"] / gram_t["min_s"],
        "baseline_threefry_sampler": {
            "what": "jax.random.normal per module (the sampler before issue 13), same keys",
            "first_call_incl_compile_s": threefry_first,
            **threefry_warm,
            "over_gram": threefry_warm["min_s"] / gram_t["min_s"],
        },
        "sample_target": "sampling (warm) within 2x of the Gram pass (issue 13 item 7)",
        "sample_target_met": sample_warm["min_s"] <= 2.0 * gram_t["min_s"],
        "gram": {"first_call_incl_compile_s": gram_first, **gram_t},
        "width": {
            "num_samples": num_samples,
            "mean": float(est.mean),
            "stderr": float(est.stderr),
            "first_call_incl_compile_s": width_first,
            **width_t,
        },
        "total_s_steady": gram_t["min_s"] + width_t["min_s"],
        "total_s_first_call": gram_first + width_first,
        "memory": {
            "rss_before_factors_bytes": rss0,
            "rss_with_factors_bytes": rss_factors,
            "maxrss_before_gram_bytes": peak_before,
            "maxrss_after_gram_and_width_bytes": peak_after,
            "extra_peak_of_gram_and_width_bytes": max(0, peak_after - peak_before),
            "peak_over_dense_size": peak_after / dense_bytes,
        },
        "baseline_one_module": {
            "module": f"layer 0 {name}",
            "factored_gram": fact_one,
            "densify_then_gram": dense_t,
            "speedup": dense_t["min_s"] / fact_one["min_s"],
            "max_rel_diff": float(np.max(np.abs(g_f - g_d)) / np.max(np.abs(g_d))),
        },
        "target": "total seconds (not minutes) on the 2-core CPU, memory << dense size",
        "target_met": (gram_first + width_first) < 60.0 and peak_after < dense_bytes / 10,
    }
