"""Training and evaluation: ``train(config)`` -> :class:`TrainResult`."""

from .checkpoint import load_checkpoint, save_checkpoint
from .evaluate import evaluate
from .loop import TrainResult, set_threads, train

__all__ = ["TrainResult", "evaluate", "load_checkpoint", "save_checkpoint", "set_threads",
           "train"]
