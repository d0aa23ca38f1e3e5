"""What the stage tasks return, as the links of flows/chain.py read them: small frozen dataclasses.

Stages that make one model return its ModelRef; the others return one of these. Every field is plain data
(model refs, rows, strings, numbers), so a result is also its cache record: `tasks.stage.stage_task` writes
`dataclasses.asdict(result)` to the stage's record and rebuilds the dataclass from it on a hit, and sets
`run_id` and `stage` (where it was logged) on both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict

from compression.comparison import EvaluationRow
from tasks.stage import ModelRef


class OnnxExport(TypedDict, total=False):
    """One ONNX file the export stage wrote and checked (tasks/export.py)."""

    candidate: str
    path: str
    sha256: str
    source_sha256: str  # the model file it was exported from
    format: str  # "float" or "int8-qdq"
    ok: bool  # usable: it agrees with the torch model (and an int8 one keeps its accuracy)
    accuracy: float
    latency_p50_ms: float
    throughput_ips: float
    size_bytes: int
    max_abs_diff: float  # float exports: against the torch model on a test batch
    top1_agreement: float
    parity_ok: int
    val_accuracy: float  # int8 exports: the gate's figures
    val_accuracy_drop: float
    top1_agreement_torch_int8: float


@dataclass(frozen=True, kw_only=True)
class StageOutput:
    run_id: str = ""  # the stage's MLflow child run (of the run that made it, on a cache hit)
    stage: str = ""


@dataclass(frozen=True)
class Distilled(StageOutput):
    kd: ModelRef  # the student distilled from the teacher: what the next stages compress
    baseline: ModelRef | None = None  # the same student trained without the teacher (distill.baseline)


@dataclass(frozen=True)
class Pruned(StageOutput):
    structured: ModelRef | None = None  # channels removed: smaller and faster, what the next stages compress
    unstructured: ModelRef | None = None  # weights zeroed: sparse, as large and as fast as before

    @property
    def next_model(self) -> ModelRef | None:
        """Unstructured pruning only zeroes weights: the structured model, when there is one, is what goes on."""
        return self.structured


@dataclass(frozen=True)
class Quantized(StageOutput):
    """The int8 copies by mode; a mode the config asked for is None when its copy failed the accuracy gate."""

    static: ModelRef | None = None
    dynamic: ModelRef | None = None

    def of(self, mode: str) -> ModelRef | None:
        return getattr(self, mode)


@dataclass(frozen=True)
class Evaluated(StageOutput):
    rows: list[EvaluationRow] = field(default_factory=list)  # one per candidate, in the order they were offered
    test_logits: dict | None = None  # {"path", "sha256"} of every candidate's test logits and the labels


@dataclass(frozen=True)
class FidelityFigures(StageOutput):
    """What the fidelity stage found, for compression.comparison.with_fidelity."""

    reference: str = ""  # the candidate every other one was compared with
    parents: dict[str, str] = field(default_factory=dict)  # int8 candidate -> the float candidate it came from
    figures: dict[str, dict] = field(default_factory=dict)  # candidate -> {"reference": {...}, "parent": {...}}
    sentences: dict[str, list[str]] = field(default_factory=dict)  # candidate -> its "what changed" sentences
    note: str = ""  # how the figures were measured
    seconds: float = 0.0


@dataclass(frozen=True)
class Exported(StageOutput):
    exports: dict[str, OnnxExport] = field(default_factory=dict)  # by candidate


@dataclass(frozen=True)
class Summary(StageOutput):
    """The comparison, as the report stage wrote it."""

    table: list[dict] = field(default_factory=list)  # the comparison table's records (None where no value)
    markdown: str = ""
    kd_gain: float | None = None
