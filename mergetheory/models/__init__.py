"""Small Flax models and the training of base + expert checkpoints.

* :mod:`.mlp` -- a ReLU MLP in Flax NNX, used functionally on pure-dict parameters
  (:func:`init_mlp`, :func:`mlp_apply`);
* :mod:`.train` -- Adam training on scikit-learn's bundled digits: a base model with uneven
  per-class knowledge and one expert per class (:func:`train_digits_experts`), evaluation
  per task (:func:`evaluate`) and orbax checkpoints (:func:`save_digits_checkpoints`).
"""

from .mlp import MLP as MLP
from .mlp import init_mlp as init_mlp
from .mlp import mlp_apply as mlp_apply
from .mlp import mlp_dims as mlp_dims
from .train import Dataset as Dataset
from .train import DigitsData as DigitsData
from .train import DigitsExperts as DigitsExperts
from .train import DigitsSpec as DigitsSpec
from .train import TaskSet as TaskSet
from .train import TrainOutput as TrainOutput
from .train import class_tasks as class_tasks
from .train import cross_entropy as cross_entropy
from .train import evaluate as evaluate
from .train import example_correct as example_correct
from .train import load_digits_split as load_digits_split
from .train import make_dataset as make_dataset
from .train import predict_proba as predict_proba
from .train import save_digits_checkpoints as save_digits_checkpoints
from .train import train_classifier as train_classifier
from .train import train_digits_experts as train_digits_experts

__all__ = [
    "MLP",
    "Dataset",
    "DigitsData",
    "DigitsExperts",
    "DigitsSpec",
    "TaskSet",
    "TrainOutput",
    "class_tasks",
    "cross_entropy",
    "evaluate",
    "example_correct",
    "init_mlp",
    "load_digits_split",
    "make_dataset",
    "mlp_apply",
    "mlp_dims",
    "predict_proba",
    "save_digits_checkpoints",
    "train_classifier",
    "train_digits_experts",
]
