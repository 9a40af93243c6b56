"""Training and evaluation: ``train(config)`` -> :class:`TrainResult`."""

from .checkpoint import (
    CheckpointError,
    check_resumable,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from .evaluate import evaluate
from .loop import TrainResult, set_threads, train

__all__ = ["CheckpointError", "TrainResult", "check_resumable", "evaluate", "load_checkpoint",
           "load_model_state", "save_checkpoint", "set_threads", "train"]
