"""NumPy transcription of PEFT's merge utilities, the reference semantics for the tests.

Source: huggingface/peft ``src/peft/utils/merge_utils.py`` (Apache-2.0; read at commit
0d4d8485b7d8ff9bb48b9937b51f91c58e819e5c, same functions as v0.21 / 5d602fd), and for the
code-level RHT the seed repository
wzj1718/ModelMergingAnalysis ``src/base/merge_utils.py`` @ 8e0e2fd
(``magnitude_based_pruning_with_rescaler``, ``process_dare_ties_magnitude_with_rescaler``).

Transcribed line by line, torch -> NumPy, with two changes needed to test deterministically:

* ``torch.topk`` is replaced by a stable ``argsort`` of ``-|x|`` (``torch.topk`` breaks
  ties arbitrarily; the tests use continuous random data, so there are no ties);
* ``torch.bernoulli`` is replaced by a ``mask`` argument: the tests pass the masks the
  JAX operator draws (:func:`mergetheory.merge.dare_keep_masks`).

Everything is computed in float64.
"""

from __future__ import annotations

import numpy as np


def reshape_weight_task_tensors(task_tensors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    new_shape = weights.shape + (1,) * (task_tensors.ndim - weights.ndim)
    return weights.reshape(new_shape)


def magnitude_based_pruning(tensor: np.ndarray, density: float) -> np.ndarray:
    mask = np.zeros(tensor.size)
    k = int(density * tensor.size)
    top_k = np.argsort(-np.abs(tensor).reshape(-1), kind="stable")[:k]
    mask[top_k] = 1
    return tensor * mask.reshape(tensor.shape)


def random_pruning(tensor: np.ndarray, density: float, rescale: bool, mask: np.ndarray):
    pruned_tensor = tensor * mask
    if rescale:
        pruned_tensor = pruned_tensor / density
    return pruned_tensor


def prune(tensor, density, method, rescale=False, mask=None):
    if density >= 1:
        return tensor  # PEFT warns and returns the tensor unchanged
    elif density < 0:
        raise ValueError(f"Density should be >= 0, got {density}")
    if method == "magnitude":
        return magnitude_based_pruning(tensor, density)
    elif method == "random":
        return random_pruning(tensor, density, rescale=rescale, mask=mask)
    raise ValueError(f"Unknown method {method}")


def calculate_majority_sign_mask(tensor: np.ndarray, method: str = "total") -> np.ndarray:
    sign = np.sign(tensor)
    if method == "total":
        sign_magnitude = tensor.sum(axis=0)
    elif method == "frequency":
        sign_magnitude = sign.sum(axis=0)
    else:
        raise RuntimeError(f'Unimplemented mask method "{method}"')
    majority_sign = np.where(sign_magnitude >= 0, 1, -1)
    return sign == majority_sign


def disjoint_merge(task_tensors: np.ndarray, majority_sign_mask: np.ndarray) -> np.ndarray:
    mixed_task_tensors = (task_tensors * majority_sign_mask).sum(axis=0)
    num_params_preserved = majority_sign_mask.sum(axis=0)
    return mixed_task_tensors / np.clip(num_params_preserved, 1.0, None)


def task_arithmetic(task_tensors, weights):
    task_tensors = np.stack(task_tensors, axis=0)
    weights = reshape_weight_task_tensors(task_tensors, weights)
    return (task_tensors * weights).sum(axis=0)


def magnitude_prune(task_tensors, weights, density):
    task_tensors = [prune(t, density, method="magnitude") for t in task_tensors]
    task_tensors = np.stack(task_tensors, axis=0)
    weights = reshape_weight_task_tensors(task_tensors, weights)
    return (task_tensors * weights).sum(axis=0)


def ties(task_tensors, weights, density, majority_sign_method="total"):
    task_tensors = [prune(t, density, method="magnitude") for t in task_tensors]
    task_tensors = np.stack(task_tensors, axis=0)
    majority_sign_mask = calculate_majority_sign_mask(task_tensors, method=majority_sign_method)
    weights = reshape_weight_task_tensors(task_tensors, weights)
    return disjoint_merge(task_tensors * weights, majority_sign_mask)


def dare_linear(task_tensors, weights, density, masks):
    task_tensors = [
        prune(t, density, method="random", rescale=True, mask=m)
        for t, m in zip(task_tensors, masks, strict=True)
    ]
    task_tensors = np.stack(task_tensors, axis=0)
    weights = reshape_weight_task_tensors(task_tensors, weights)
    return (task_tensors * weights).sum(axis=0)


def dare_ties(task_tensors, weights, density, masks, majority_sign_method="total"):
    task_tensors = [
        prune(t, density, method="random", rescale=True, mask=m)
        for t, m in zip(task_tensors, masks, strict=True)
    ]
    task_tensors = np.stack(task_tensors, axis=0)
    majority_sign_mask = calculate_majority_sign_mask(task_tensors, method=majority_sign_method)
    weights = reshape_weight_task_tensors(task_tensors, weights)
    return disjoint_merge(task_tensors * weights, majority_sign_mask)


# -- seed repository (wzj1718/ModelMergingAnalysis src/base/merge_utils.py) ---------------


def magnitude_based_pruning_with_rescaler(tensor, density, rescale):
    mask = np.zeros(tensor.size)
    k = int(density * tensor.size)
    top_k = np.argsort(-np.abs(tensor).reshape(-1), kind="stable")[:k]
    mask[top_k] = 1
    pruned_tensor = tensor * mask.reshape(tensor.shape)
    if rescale:
        pruned_tensor = pruned_tensor / density
    return pruned_tensor


def process_dare_ties_magnitude_with_rescaler(tensors, weights, density, method="total"):
    """The code-level RHT; the caller normalizes ``weights`` to sum 1 (GENOME does)."""
    if density >= 1:
        pruned_tensors = list(tensors)  # `prune` returns the tensor unchanged
    else:
        pruned_tensors = [magnitude_based_pruning_with_rescaler(t, density, True) for t in tensors]
    pruned_tensors = np.stack(pruned_tensors, axis=0)
    majority_sign_mask = calculate_majority_sign_mask(pruned_tensors, method=method)
    weights_reshaped = weights.reshape(-1, *([1] * (pruned_tensors.ndim - 1)))
    return disjoint_merge(pruned_tensors * weights_reshaped, majority_sign_mask)
