"""Small Flax models and the training of base + expert checkpoints.

* :mod:`.mlp` -- a ReLU MLP in Flax NNX, used functionally on pure-dict parameters
  (:func:`init_mlp`, :func:`mlp_apply`);
* :mod:`.train` -- Adam training on scikit-learn's bundled digits: a base model with uneven
  per-class knowledge and one expert per class (:func:`train_digits_experts`), evaluation
  per task (:func:`evaluate`) and orbax checkpoints (:func:`save_digits_checkpoints`);
* :mod:`.zoo` -- the expert zoo trained here on real data (a byte-level transformer on the
  standard library's source, digits transform x label-map tasks), full and LoRA experts,
  cached by fingerprint (:func:`build_zoo`, :func:`zoo_spec`); its evaluation and delta
  helpers live in :mod:`mergetheory.models.zoo` (``zoo.evaluate`` is not the digits
  :func:`evaluate`). Pieces: :mod:`.corpus`, :mod:`.language`, :mod:`.vision`,
  :mod:`.lora_train`, :mod:`.zoo_data`, :mod:`.zoo_train`.
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
from .zoo import ExpertZoo as ExpertZoo
from .zoo import ZooSpec as ZooSpec
from .zoo import build_zoo as build_zoo
from .zoo import zoo_spec as zoo_spec

__all__ = [
    "MLP",
    "Dataset",
    "DigitsData",
    "DigitsExperts",
    "DigitsSpec",
    "ExpertZoo",
    "TaskSet",
    "TrainOutput",
    "ZooSpec",
    "build_zoo",
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
    "zoo_spec",
]
