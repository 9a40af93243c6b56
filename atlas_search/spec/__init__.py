"""The YAML spec language: concrete configs and search spaces (pydantic v2).

``load(path)`` returns a :class:`Config` (concrete) or a :class:`Space` (with ``study:``)
and raises :class:`SpecError` with located messages on bad input.
"""

from .config import Config
from .distributions import Choice, Fixed, FloatRange, IntRange
from .errors import Issue, SpecError
from .load import load, load_config, loads
from .model import MemorySpec, ModelSpec
from .presets import preset_names
from .space import Dimension, Space
from .study import StudySpec
from .task import MQARTask, TaskSpec
from .train import TrainSpec
from .yamlio import dump_yaml

__all__ = [
    "Choice",
    "Config",
    "Dimension",
    "FloatRange",
    "Fixed",
    "IntRange",
    "Issue",
    "MemorySpec",
    "ModelSpec",
    "MQARTask",
    "Space",
    "SpecError",
    "StudySpec",
    "TaskSpec",
    "TrainSpec",
    "dump_yaml",
    "load",
    "load_config",
    "loads",
    "preset_names",
]
