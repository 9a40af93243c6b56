"""The ``task:`` block: which synthetic or real task a config trains and scores on.

Tasks form a union tagged by ``name`` (``mqar`` when omitted). MAD tasks follow MAD's
``MADConfig`` generation parameters and baseline settings (Poli et al., 2024); S-NIAH
follows RULER's single-needle variants; PTB is Mikolov's Penn Treebank.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from .base import Spec, rule_error
from .train import LearningRate, Seed, WeightDecay


class _Task(Spec):
    num_train: int = Field(20000, ge=1, description="training examples")
    num_test: int = Field(1000, ge=1, description="held-out examples")
    seed: Seed = Field(0, description="data seed (train and test never overlap)")


class MQARTask(_Task):
    """Multi-query associative recall as Zoology defines it (keys from the first half of the
    vocabulary, values from the second, queries at power-law gaps; scored on answers only)."""

    name: Literal["mqar"] = "mqar"
    vocab_size: int = Field(8192, ge=8)
    seq_len: int = Field(64, ge=4)
    num_kv_pairs: int = Field(4, ge=1)
    power_a: float = Field(0.01, gt=0, le=1, description="power-law exponent of query gaps")
    random_non_queries: bool = Field(True, description="fill non-query slots with random tokens")
    test_seq_len: int | None = Field(None, ge=4, description="extrapolation: test length")
    test_num_kv_pairs: int | None = Field(None, ge=1, description="extrapolation: test pairs")

    @model_validator(mode="after")
    def _rules(self) -> MQARTask:
        for length_field, pairs_field in (
            ("seq_len", "num_kv_pairs"),
            ("test_seq_len", "test_num_kv_pairs"),
        ):
            length = getattr(self, length_field) or self.seq_len
            pairs = getattr(self, pairs_field) or self.num_kv_pairs
            if 4 * pairs > length:
                raise rule_error(
                    pairs_field,
                    f"{pairs} key-value pairs need seq_len >= {4 * pairs} (got {length}): "
                    "each pair is written once and queried once",
                )
            if 2 * pairs > self.vocab_size // 2:
                raise rule_error(
                    pairs_field,
                    f"{pairs} distinct keys do not fit in half of vocab_size {self.vocab_size}",
                )
        return self


class _MADTask(_Task):
    """Common MAD generation parameters (MADConfig); defaults are each task's baseline."""

    num_train: int = Field(12800, ge=1)
    num_test: int = Field(1280, ge=1)


class InContextRecallTask(_MADTask):
    """MAD in-context recall: key-value pairs with a per-sequence mapping, queried again."""

    name: Literal["in_context_recall"] = "in_context_recall"
    vocab_size: int = Field(16, ge=4)
    seq_len: int = Field(128, ge=8)
    multi_query: bool = True


class FuzzyInContextRecallTask(_MADTask):
    """MAD fuzzy recall: keys and values are multi-token motifs."""

    name: Literal["fuzzy_in_context_recall"] = "fuzzy_in_context_recall"
    vocab_size: int = Field(16, ge=4)
    seq_len: int = Field(128, ge=8)
    k_motif_size: int = Field(3, ge=1)
    v_motif_size: int = Field(3, ge=1)
    multi_query: bool = True


class NoisyInContextRecallTask(_MADTask):
    """MAD noisy recall: noise tokens from a separate vocabulary are inserted."""

    name: Literal["noisy_in_context_recall"] = "noisy_in_context_recall"
    vocab_size: int = Field(32, ge=4)
    seq_len: int = Field(128, ge=8)
    noise_vocab_size: int = Field(16, ge=1)
    frac_noise: float = Field(0.2, ge=0, lt=1)
    multi_query: bool = True


class SelectiveCopyingTask(_MADTask):
    """MAD selective copying: copy the non-noise tokens in order, ignoring noise."""

    name: Literal["selective_copying"] = "selective_copying"
    vocab_size: int = Field(16, ge=4)
    seq_len: int = Field(256, ge=8)
    num_tokens_to_copy: int = Field(16, ge=1)


class CompressionTask(_MADTask):
    """MAD compression: encode a sequence into one token and recover it."""

    name: Literal["compression"] = "compression"
    vocab_size: int = Field(16, ge=4)
    seq_len: int = Field(32, ge=4)


class MemorizationTask(_MADTask):
    """MAD memorisation: a fixed key-value map shared by all sequences, learned in weights."""

    name: Literal["memorization"] = "memorization"
    vocab_size: int = Field(256, ge=8)
    seq_len: int = Field(32, ge=4)
    num_train: int = Field(256, ge=1)


class SNIAHTask(_Task):
    """RULER-style single needle in a haystack, trained at ``seq_len`` and evaluated at each
    of ``test_lengths``: passkey in repeated filler, number in essay-like filler, or a
    word/uuid-like value."""

    name: Literal["s_niah"] = "s_niah"
    variant: Literal["passkey", "number", "uuid"] = "passkey"
    vocab_size: int = Field(256, ge=32)
    seq_len: int = Field(128, ge=16)
    test_lengths: list[int] = Field(default_factory=lambda: [128, 256, 512], min_length=1)
    num_train: int = Field(5000, ge=1)
    num_test: int = Field(200, ge=1)

    @model_validator(mode="after")
    def _rules(self) -> SNIAHTask:
        # needle "NEEDLE key IS value END" + query "QUERY key IS value" + 1 filler token
        shortest = {"passkey": 17, "number": 21, "uuid": 23}[self.variant]
        for field, length in [("seq_len", self.seq_len)] + [
            ("test_lengths", n) for n in self.test_lengths
        ]:
            if length < shortest:
                raise rule_error(field, f"the {self.variant} variant needs sequences of at "
                                 f"least {shortest} tokens (got {length})")
        return self


class PTBTask(Spec):
    """Penn Treebank language modelling (Mikolov's split, from the ``treebank`` package):
    word level (10k vocabulary, perplexity) or character level (bits per character)."""

    name: Literal["ptb"] = "ptb"
    level: Literal["word", "char"] = "word"
    seq_len: int = Field(128, ge=2)
    eval_split: Literal["valid", "test"] = "valid"
    max_eval_tokens: int | None = Field(
        None, ge=1, description="evaluate on the first N tokens of the split (None = all)"
    )

    @property
    def vocab_size(self) -> int:
        """10,000 words (with ``<eos>``), or the 50 characters of the training text."""
        return 10000 if self.level == "word" else 50


MAD_TASK_NAMES = (
    "in_context_recall",
    "fuzzy_in_context_recall",
    "noisy_in_context_recall",
    "selective_copying",
    "compression",
    "memorization",
)


_TRAIN_SIZES = [6400, 3200, 1600, 800]

MAD_BASELINES: dict[str, dict] = {
    "in_context_recall": {"vocab_size": 16, "seq_len": 128, "num_train": 12800,
                          "num_test": 1280, "multi_query": True},
    "fuzzy_in_context_recall": {"vocab_size": 16, "seq_len": 128, "num_train": 12800,
                                "num_test": 1280, "multi_query": True, "k_motif_size": 3,
                                "v_motif_size": 3},
    "noisy_in_context_recall": {"vocab_size": 32, "seq_len": 128, "num_train": 12800,
                                "num_test": 1280, "multi_query": True, "noise_vocab_size": 16,
                                "frac_noise": 0.2},
    "selective_copying": {"vocab_size": 16, "seq_len": 256, "num_train": 12800,
                          "num_test": 1280, "num_tokens_to_copy": 16},
    "compression": {"vocab_size": 16, "seq_len": 32, "num_train": 12800, "num_test": 1280},
    "memorization": {"vocab_size": 256, "seq_len": 32, "num_train": 256, "num_test": 1280},
}
"""Each MAD task's baseline setting (``configs/tasks/<task>.yml`` ``baseline`` plus MADConfig's
1,280 test examples), as spec-field values."""


def _one_factor(**changes: list) -> list[dict]:
    return [{field: value} for field, values in changes.items() for value in values]


MAD_GRID: dict[str, list[dict]] = {
    "in_context_recall": _one_factor(vocab_size=[32, 64, 128], seq_len=[256, 512, 1024],
                                     num_train=_TRAIN_SIZES),
    "fuzzy_in_context_recall": _one_factor(vocab_size=[32, 64, 128], seq_len=[256, 512, 1024],
                                           num_train=_TRAIN_SIZES),
    # MAD: "adding 16 for noise vocab" — vocab_size counts the 16 noise tokens.
    "noisy_in_context_recall": _one_factor(vocab_size=[48, 80, 144], seq_len=[256, 512, 1024],
                                           num_train=_TRAIN_SIZES, frac_noise=[0.4, 0.6, 0.8]),
    "selective_copying": _one_factor(vocab_size=[32, 64, 128], seq_len=[512, 1024],
                                     num_train=_TRAIN_SIZES, num_tokens_to_copy=[32, 64, 96]),
    "compression": _one_factor(vocab_size=[32, 64, 128], seq_len=[64, 128, 256],
                               num_train=_TRAIN_SIZES),
    "memorization": _one_factor(vocab_size=[512, 1024, 2048, 4096, 8192]),
}
"""MAD's one-factor difficulty changes (``configs/tasks/<task>.yml`` ``changes``): each entry
overrides one spec field of the task's baseline."""


def mad_settings(name: str) -> list[dict]:
    """The full list of settings MAD scores a task on: the baseline, then each one-factor
    change applied to it (MAD's task score is the mean over these)."""
    base = MAD_BASELINES[name]
    return [dict(base)] + [{**base, **change} for change in MAD_GRID[name]]


def mad_row_len(name: str, fields: dict[str, Any]) -> int:
    """Tokens per row the model reads for MAD task ``name`` with spec ``fields`` (the
    generators' layouts in ``tasks/mad.py``: recall rows are shifted by one, compression
    rows are the data then as many markers)."""
    seq = fields["seq_len"]
    if name in ("in_context_recall", "noisy_in_context_recall"):
        return seq - 1 if fields.get("multi_query", True) else seq
    if name == "compression":
        return 2 * (seq - 1)
    if name == "memorization":
        return 2 * (seq // 2)
    return seq


class MADSuiteTask(Spec):
    """The MAD protocol (Poli et al., 2024) as one task: for each listed task and difficulty
    setting, train with every (lr, weight decay) of the grid and keep the best test
    accuracy; a task's score is the mean over its settings; ``mad_score`` is the mean over
    tasks. ``settings: baseline`` scores the baseline setting only (CPU scale); ``all`` adds
    MAD's one-factor difficulty changes. ``max_train``/``max_test`` cap the example counts."""

    name: Literal["mad"] = "mad"
    tasks: list[Literal[MAD_TASK_NAMES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(MAD_TASK_NAMES), min_length=1
    )
    settings: Literal["baseline", "all"] = "baseline"
    lr_grid: list[LearningRate] = Field(default_factory=lambda: [1e-4, 5e-4, 1e-3],
                                        min_length=1, description="each as train.lr")
    wd_grid: list[WeightDecay] = Field(default_factory=lambda: [0.0, 0.1], min_length=1,
                                       description="each as train.weight_decay")
    max_train: int | None = Field(None, ge=1, description="cap on training examples")
    max_test: int | None = Field(None, ge=1, description="cap on test examples")
    seed: Seed = Field(0, description="data seed of every setting")

    @property
    def vocab_size(self) -> int:
        """The largest vocabulary of the settings it scores: each setting trains its own
        model at its own vocabulary (or ``model.vocab_size``, which must hold this one);
        ``build`` and the search's size constraints measure the largest of them."""
        return max(fields["vocab_size"] for _, fields in self.instances())

    def instances(self) -> list[tuple[str, dict[str, Any]]]:
        """``(task name, spec fields)`` for every scored setting, in a fixed order."""
        out = []
        for name in self.tasks:
            settings = mad_settings(name) if self.settings == "all" else [MAD_BASELINES[name]]
            for fields in settings:
                fields = dict(fields, seed=self.seed)
                if self.max_train is not None:
                    fields["num_train"] = min(fields["num_train"], self.max_train)
                if self.max_test is not None:
                    fields["num_test"] = min(fields["num_test"], self.max_test)
                out.append((name, fields))
        return out

    def longest_setting(self) -> tuple[str, int]:
        """``(task name, row length)`` of the scored setting with the longest rows."""
        return max(((n, mad_row_len(n, f)) for n, f in self.instances()), key=lambda t: t[1])

    @property
    def seq_len(self) -> int:
        """The longest row of the settings it scores (for summaries: each setting trains at
        its own length)."""
        return self.longest_setting()[1]


MAD_TASKS = (
    InContextRecallTask,
    FuzzyInContextRecallTask,
    NoisyInContextRecallTask,
    SelectiveCopyingTask,
    CompressionTask,
    MemorizationTask,
)
TASK_CLASSES = (MQARTask, *MAD_TASKS, SNIAHTask, PTBTask, MADSuiteTask)
TASK_NAMES: tuple[str, ...] = tuple(c.model_fields["name"].default for c in TASK_CLASSES)


def _task_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("name", "mqar")
    return getattr(value, "name", None)


TaskSpec = Annotated[
    Annotated[MQARTask, Tag("mqar")]
    | Annotated[InContextRecallTask, Tag("in_context_recall")]
    | Annotated[FuzzyInContextRecallTask, Tag("fuzzy_in_context_recall")]
    | Annotated[NoisyInContextRecallTask, Tag("noisy_in_context_recall")]
    | Annotated[SelectiveCopyingTask, Tag("selective_copying")]
    | Annotated[CompressionTask, Tag("compression")]
    | Annotated[MemorizationTask, Tag("memorization")]
    | Annotated[SNIAHTask, Tag("s_niah")]
    | Annotated[PTBTask, Tag("ptb")]
    | Annotated[MADSuiteTask, Tag("mad")],
    Discriminator(_task_tag),
]
"""Any task, selected by ``name`` (default ``mqar``)."""


ALWAYS_REPORTED = ("params", "state_size")
"""Metrics of every completed run: the model's size, known before training."""


def reported_metrics(name: str, level: str | None = None) -> tuple[str, ...]:
    """The study metrics (``study.METRICS``) a completed run of task ``name`` reports, as
    ``train.loop.train`` and ``train.mad_protocol.run_mad`` build them: ``mad`` reports
    ``mad_score`` and ``accuracy`` (no training loop of its own); every other task its
    main evaluation's ``loss`` and ``accuracy`` plus ``tokens_per_s``, and ``ptb``
    ``perplexity`` (``level: word``) or ``bpc`` (``level: char``; ``None``: either)."""
    if name == "mad":
        return ("mad_score", "accuracy", *ALWAYS_REPORTED)
    lm: tuple[str, ...] = ()
    if name == "ptb":
        lm = {"word": ("perplexity",), "char": ("bpc",)}.get(level or "", ("perplexity", "bpc"))
    return ("accuracy", "loss", *lm, "tokens_per_s", *ALWAYS_REPORTED)
