"""Every option of the TeacherSelection environments, in one typed dataclass.

:class:`EnvConfig` is the single source of truth: ``gymnasium.make(id, **options)`` takes its fields as keywords,
``kd-gym train`` / ``bench`` generate one flag per field marked ``cli`` from it (``agents.experiments.flags``), and
the options table of docs/env.md is generated from it (``python scripts/docs_tables.py``; a test checks it is
current). The string under each field is its documentation.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import textwrap
from dataclasses import dataclass, field
from typing import Any

STUDENTS = ("lite", "full")
LITE_STUDENTS = ("ngrams", "mlp")
NGRAM_UPDATES = ("sparse", "dense", "sgd")
ORACLES = ("auto", "gold", "silo", "silo-gold", "silo-mix")  # as kd_gym.regime.ORACLES
ACTION_TYPES = ("weights", "select")
PRECISIONS = ("auto", "bf16", "fp32")
POOLS = ("siloed", "generalist")  # as kd_gym.defaults.POOLS (kept here so that the config imports nothing heavy)


def _no_flag(default: Any = None, factory: Any = None) -> Any:
    """A field that is set from Python only (objects, dicts), not from the command line."""
    if factory is not None:
        return field(default_factory=factory, metadata={"cli": False})
    return field(default=default, metadata={"cli": False})


@dataclass
class EnvConfig:
    """Options of ``kd_gym/TeacherSelection-v0`` (full student) and ``kd_gym/TeacherSelectionLite-v0`` (lite)."""

    # -- data and teachers
    task: str | object = "tweets"
    """task name (tweets, glue/<config>, a hub dataset owner/name, a local csv/jsonl/parquet file) or a Task"""
    task_kwargs: dict = _no_flag(factory=dict)
    """extra keywords of kd_gym.tasks.load_task (data_files, text_column, label_column, ...)"""
    split_seed: int = 0
    """seed of the task's train/dev/test split (fixed across episodes and agents)"""
    teachers: str | list | object | None = None
    """None: the task's default pool; or hub ids / folders (comma-separated on the command line) / a TeacherPool"""
    pool: str = "siloed"
    """the task's default pool when teachers is None: siloed (one expert per silo) | generalist (docs/tasks-and-teachers.md)"""
    max_length: int = 64
    """max tokens per input (teachers, sentence encoder, full student)"""
    cache_dir: str | None = None
    """cache root for teacher logits and embeddings (None: $KD_GYM_HOME, default ~/.cache/kd_gym)"""
    scenario: str = "default"
    """default | noisy-teacher | specialists: a transformation of the pool with a known oracle (docs/benchmark.md)"""
    data: object = _no_flag()
    """a prebuilt kd_gym.data.KDData (skips task, teachers and encoder); for tests and custom setups"""
    oracle: str = "auto"
    """the default scenario's privileged oracle: auto (silo where the pool records its silos, else gold) | silo (each
    instance's silo expert) | gold (the teacher most probable on the gold label) | silo-gold | silo-mix
    (docs/benchmark.md)"""
    gold_labels: int | None = 500
    """student training rows that keep their gold label (stratified, seeded by split_seed); the others are the
    transfer set, taught by the teachers alone, labels hidden. None: all rows keep their label (docs/env.md)"""
    # -- student
    student: str = "lite"
    """lite (MLP over frozen sentence embeddings) or full (transformer trained from tokens)"""
    student_checkpoint: str | None = None
    """full: encoder whose first layers make the student; lite: sentence encoder (None: the packaged MiniLM)"""
    student_layers: int = 2
    """full student: transformer layers kept"""
    lite_student: str = "ngrams"
    """lite student: ngrams (fastText-style mean of hashed uni- and bigram embeddings, trained from tokens) | mlp (an
    MLP head over frozen MiniLM sentence embeddings)"""
    ngram_buckets: int = 16384
    """ngrams lite student: rows of the hashed n-gram embedding table"""
    ngram_dim: int = 32
    """ngrams lite student: embedding size"""
    ngram_update: str = "sgd"
    """ngrams lite student: sgd (fastText's rule: a step adds each real position's gradient into its table row, SGD
    at ngram_sgd_lr decaying linearly over episode_steps, no moments; AdamW on the classifier) | sparse (lazy AdamW
    on the rows a batch touched: the previous default) | dense (AdamW over the whole table every step: the first
    default); every choice's numbers reproducible on a CPU (docs/env.md)"""
    ngram_sgd_lr: float = 128.0
    """ngrams lite student, ngram_update=sgd: the table rows' SGD learning rate at the first update, on the batch's
    mean loss (fastText's per-example rate times the batch size: 4 per example at batch 32)"""
    lite_hidden: int = 128
    """mlp lite student: hidden units of the MLP head (0: a linear classifier)"""
    lr: float | None = None
    """student AdamW learning rate (None: 1e-2 ngrams, 1e-3 mlp, 1e-4 full)"""
    weight_decay: float = 0.01
    """student AdamW weight decay"""
    alpha: float = 0.5
    """weight of the gold-label CE in the KD loss, in [0, 1]"""
    temperature: float = 2.0
    """KD temperature T > 0"""
    device: str = "auto"
    """auto (CUDA when available) | cpu | cuda | cuda:<i>"""
    precision: str = "auto"
    """auto (bf16 autocast on CUDA; fp32 student on CPU) | bf16 | fp32; part of the teacher-logit cache key"""
    # -- decision problem
    batch_size: int = 32
    """B, training instances per step"""
    episode_steps: int = 200
    """student updates per episode; the end of the budget is reported as truncated (a time limit)"""
    action_type: str = "weights"
    """weights: Box(0, 1, (B, K)) | select: MultiBinary((B, K)), the paper's keep/drop"""
    reward: str | object = "dev_delta"
    """a name registered in kd_gym.rewards (dev_delta, dev_loss_delta, neg_ce, neg_ce_kd, ...) or a Reward"""
    reward_interval: int = 10
    """interval rewards (dev_delta, dev_loss_delta) are measured every this many steps and at the episode's end"""
    reward_scale: float = 1.0
    """multiplies every reward"""
    dev_subset: int = 500
    """dev instances used for rewards (a fixed subset, kept on the device)"""
    include_representation: bool = False
    """append the student's pooled representation to instance_features"""
    include_embedding: bool | None = None
    """append the instance's frozen sentence embedding to instance_features (None: yes for the lite student, no
    for the full one, which has none; validate() resolves it)"""
    credit: bool = False
    """put info["credit"] (B, K), each (instance, teacher) pair's first-order effect on the dev loss, and
    info["student_credit"] (B,), each instance's under the weights chosen (the student-credit reward tier, docs/env.md)"""

    def validate(self) -> EnvConfig:
        """Check every value; raise ``ValueError`` naming the option, its value and what is valid."""

        def require(ok: bool, name: str, valid: str) -> None:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid; {valid}")

        require(self.student in STUDENTS, "student", f"use one of {STUDENTS}")
        require(self.action_type in ACTION_TYPES, "action_type", f"use one of {ACTION_TYPES}")
        require(self.precision in PRECISIONS, "precision", f"use one of {PRECISIONS}")
        require(self.pool in POOLS, "pool", f"use one of {POOLS}")
        require(self.oracle in ORACLES, "oracle", f"use one of {ORACLES}")
        require(self.lite_student in LITE_STUDENTS, "lite_student", f"use one of {LITE_STUDENTS}")
        require(self.ngram_update in NGRAM_UPDATES, "ngram_update", f"use one of {NGRAM_UPDATES}")
        for name in ("batch_size", "episode_steps", "reward_interval", "dev_subset", "max_length", "student_layers",
                     "ngram_dim"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name, "use an integer >= 1")
        require(isinstance(self.ngram_buckets, int) and self.ngram_buckets >= 2, "ngram_buckets",
                "use an integer >= 2 (id 0 pads), e.g. 16384")
        require(isinstance(self.lite_hidden, int) and self.lite_hidden >= 0, "lite_hidden", "use an integer >= 0")
        require(self.gold_labels is None or (isinstance(self.gold_labels, int) and self.gold_labels >= 1),
                "gold_labels", "use an integer >= 1, or None for every label")
        require(not (self.include_embedding and self.student == "full"), "include_embedding",
                "the full student has no frozen embedding; use include_representation=True")
        if self.include_embedding is None:  # what the instance is: the lite student has it cached, the full has not
            self.include_embedding = self.student == "lite"
        require(_real(self.temperature) and self.temperature > 0, "temperature", "use a number > 0, e.g. 2.0")
        require(_real(self.alpha) and 0.0 <= self.alpha <= 1.0, "alpha", "use a number in [0, 1], e.g. 0.5")
        require(self.lr is None or (_real(self.lr) and self.lr > 0), "lr", "use a number > 0, or None for the default")
        require(_real(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "use a number >= 0")
        require(_real(self.ngram_sgd_lr) and self.ngram_sgd_lr > 0, "ngram_sgd_lr", "use a number > 0, e.g. 128")
        require(_real(self.reward_scale), "reward_scale", "use a finite number")
        return self

    @classmethod
    def field_docs(cls) -> dict[str, str]:
        """Field name -> its documentation string."""
        return dataclass_field_docs(cls)

    @classmethod
    def cli_fields(cls) -> list[dataclasses.Field]:
        """The fields that are command-line flags (all but the Python-only ones)."""
        return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def dataclass_field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of a dataclass and its dataclass bases (``x: int = 1`` then ``\"\"\"doc\"\"\"``)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def default_config() -> dict[str, Any]:
    """Every option with its default, as a dict (the fields of :class:`EnvConfig`)."""
    return {f.name: getattr(EnvConfig(), f.name) for f in dataclasses.fields(EnvConfig)}


def options_table() -> str:
    """The markdown table of every option (name, type, default, meaning), as in docs/env.md."""
    docs = EnvConfig.field_docs()
    lines = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(EnvConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kind = str(f.type).replace("|", "\\|")
        meaning = docs[f.name].replace("|", "\\|")
        lines.append(f"| `{f.name}` | {kind} | `{default!r}` | {meaning} |")
    return "\n".join(lines)
