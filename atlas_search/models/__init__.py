"""nn.Modules of the ATLAS family and the model builder (DESIGN.md §5-§6).

``build_model(config_or_spec, vocab_size=...) -> LM``; ``summarize(model, seq_len)``.
Modules: :mod:`.gates` (alpha/eta/gamma/theta), :mod:`.memory_mixer`, :mod:`.attention`,
:mod:`.hybrid` (MAG), :mod:`.block` (pre-norm block, MAL layout), :mod:`.lm`,
:mod:`.norm`, :mod:`.conv`, :mod:`.mlp`, :mod:`.rope`.
"""

from .attention import AttentionMixer
from .block import Block, build_mixer
from .builder import ModelTooLarge, build_model
from .gates import MemoryGates
from .hybrid import MAGMixer
from .lm import LM
from .memory_mixer import MemoryMixer
from .summary import count_params, summarize

__all__ = [
    "LM", "AttentionMixer", "Block", "MAGMixer", "MemoryGates", "MemoryMixer", "build_mixer",
    "ModelTooLarge", "build_model", "count_params", "summarize",
]
