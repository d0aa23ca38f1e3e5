"""Pipeline configuration: YAML files validated by pydantic, with dotted-key overrides.

A bad value fails here, before any work, with a message that names the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from compression.train_config import TrainConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line naming the field."""


def without_duplicates(value: list) -> list:
    """A list setting whose entries must be distinct (the field's name prefixes the message)."""
    if len(set(value)) != len(value):
        raise ValueError(f"{value} has duplicates")
    return value


class Section(BaseModel):
    # inf and nan make no sense for any setting here; pydantic accepts them unless told otherwise.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# Classes of the datasets whose class count is known before reading them.
KNOWN_CLASS_COUNTS = {"fashion-mnist": 10, "cifar10": 10}


class DataConfig(Section):
    name: Literal["fashion-mnist", "cifar10", "image-folder"] = "fashion-mnist"
    data_dir: str | None = None
    classes: list[int] | None = None
    train_per_class: int | None = Field(None, ge=1, description="label budget; None uses every training image")
    unlabeled_per_class: int = Field(0, ge=0, description="further training images, labels hidden, for KD only")
    val_per_class: int = Field(100, ge=1)
    test_per_class: int | None = Field(None, ge=1)
    image_size: int = Field(224, ge=8, description="image-folder only: the model's input size (the crop)")
    transform: Literal["auto", "reference", "small"] = Field(
        "auto", description="image-folder only: reference (torchvision's presets: RandomResizedCrop + flip, "
                            "resize + centre crop) or small (centre fit, 2-pixel shifted crop + flip); auto: "
                            "reference from 64 px up")
    resize_size: int | None = Field(None, ge=8, description="evaluation resize of the short side before the centre "
                                                            "crop; default image_size / 0.875 (reference) or "
                                                            "image_size (small)")
    crop_scale: tuple[float, float] = Field((0.08, 1.0), description="reference training crop: share of the image area")
    hflip: bool = Field(True, description="random horizontal flips in training")
    loader_workers: int | None = Field(None, ge=0, description="image-folder only: DataLoader worker processes "
                                                               "decoding images; default one per core, at most 8")
    bad_images: Literal["skip", "fail"] = Field("skip", description="an image file that cannot be read: left out "
                                                                    "(counted, named in a warning) or bad input")
    download: bool = True
    eval_batch_size: int = Field(256, ge=1)

    # How images are read in parallel changes no result: no cache key holds it.
    RUN_ONLY: ClassVar[set] = {"loader_workers"}

    @field_validator("crop_scale")
    @classmethod
    def _crop_scale(cls, value):
        low, high = value
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale {list(value)} must satisfy 0 < low <= high <= 1")
        return value

    @model_validator(mode="after")
    def _resize(self):
        if self.resize_size is not None and self.resize_size < self.image_size:
            raise ValueError(f"resize_size {self.resize_size} is smaller than image_size {self.image_size}")
        return self

    @field_validator("classes")
    @classmethod
    def _classes(cls, value, info: ValidationInfo):
        if value is not None:
            count = KNOWN_CLASS_COUNTS.get(info.data.get("name"))
            if count is not None and (bad := [c for c in value if c >= count]):
                raise ValueError(f"class subset {bad} out of range 0..{count - 1}")
            if not value:
                raise ValueError("class subset is empty")
            if any(c < 0 for c in value):
                raise ValueError(f"class subset {value} has negative indices")
            if len(set(value)) != len(value):
                raise ValueError(f"class subset {value} has duplicates")
        return value



SOURCE_PATTERN = re.compile(r"^(torchvision:[\w.]+(:[\w.]+)?|scratch:[\w.]+|models:/.+|file:.+)$")


class StageConfig(Section):
    """A stage that trains: a partial `train:` mapping in YAML is laid over the stage's own defaults."""

    TRAIN_DEFAULTS: ClassVar[dict] = {}

    @model_validator(mode="before")
    @classmethod
    def _merge_train_defaults(cls, data):
        if isinstance(data, dict) and isinstance(data.get("train"), dict):
            data = {**data, "train": {**cls.TRAIN_DEFAULTS, **data["train"]}}
        return data

    @field_validator("train", mode="after", check_fields=False)
    @classmethod
    def _finite_train(cls, value):
        for name, setting in asdict(value).items():
            if isinstance(setting, float) and not math.isfinite(setting):
                raise ValueError(f"{name} must be a finite number, got {setting}")
        return value

    def _needs_epochs(self, stage: str):
        if getattr(self, "enabled", True) and self.train.epochs < 1:
            raise ValueError(f"train.epochs must be at least 1 while {stage} is enabled")
        return self


class FinetuneConfig(StageConfig):
    TRAIN_DEFAULTS: ClassVar[dict] = dict(epochs=4, optimizer="adamw", lr=2e-3, weight_decay=0.01)
    enabled: bool = True
    freeze_epochs: int = Field(1, ge=0, description="epochs with only the new head trained")
    backbone_lr_factor: float = Field(0.1, gt=0, le=1)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(**FinetuneConfig.TRAIN_DEFAULTS))

    @model_validator(mode="after")
    def _epochs(self):
        return self._needs_epochs("finetune")


class TrimConfig(Section):
    enabled: bool = False
    keep_per_stage: int | list[int] = 1
    strategy: Literal["first", "spread"] = "first"

    @field_validator("keep_per_stage")
    @classmethod
    def _keep(cls, value):
        counts = value if isinstance(value, list) else [value]
        if not counts or min(counts) < 1:
            raise ValueError(f"keep_per_stage {value}: every stage keeps at least 1 block")
        return value


class DistillConfig(StageConfig):
    TRAIN_DEFAULTS: ClassVar[dict] = dict(epochs=6, optimizer="adamw", lr=2e-3, weight_decay=0.01)
    enabled: bool = True
    student: str | None = Field(None, description="architecture of a fresh student; None: the (trimmed) teacher")
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)
    baseline: bool = Field(True, description="also train the same student without KD, to report the KD gain")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(**DistillConfig.TRAIN_DEFAULTS))

    @model_validator(mode="after")
    def _epochs(self):
        return self._needs_epochs("distill")


class PruneConfig(StageConfig):
    TRAIN_DEFAULTS: ClassVar[dict] = dict(epochs=2, optimizer="adamw", lr=1e-3, weight_decay=0.01)
    enabled: bool = True
    method: Literal["structured", "unstructured", "both"] = "structured"
    ratio: float = Field(0.5, gt=0, lt=1, description="per-layer channel ratio (structured) or weight ratio")
    importance: Literal["l1", "l2", "taylor", "bn-scale"] = "l2"
    iterative_steps: int = Field(3, ge=1)
    round_to: int | None = Field(8, ge=1)
    global_pruning: bool = False
    kd: bool = Field(True, description="fine-tune between steps with KD from the teacher (else plain CE)")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(**PruneConfig.TRAIN_DEFAULTS))


class QuantizeConfig(Section):
    enabled: bool = False
    modes: list[Literal["static", "dynamic"]] = Field(
        ["static"], min_length=1, description="static: conv+linear int8 with calibration; dynamic: linear only")
    backend: str = Field("x86", description="torch quantized engine: x86, fbgemm, onednn or qnnpack")
    calibration_size: int = Field(256, description="training images the static observers see")
    max_accuracy_drop: float = Field(
        0.01, ge=0, le=1, description="vs the float model on the val split; a quantized model further off is not "
                                      "offered as a candidate")

    BACKENDS: ClassVar[tuple[str, ...]] = ("x86", "fbgemm", "onednn", "qnnpack")

    @field_validator("backend")
    @classmethod
    def _backend(cls, value):
        # Whether this torch build has the engine is checked by the preflight (it needs torch; configs don't).
        if value not in cls.BACKENDS:
            raise ValueError(f"backend {value!r} is not supported; use one of {', '.join(cls.BACKENDS)}")
        return value

    @field_validator("calibration_size")
    @classmethod
    def _calibration(cls, value):
        if value < 1:
            raise ValueError(f"calibration size must be at least 1 image, got {value}")
        return value

    @field_validator("modes")
    @classmethod
    def _modes(cls, value):
        return without_duplicates(value)


class ModelConfig(Section):
    # The names are compression/models.py's STEMS (a config is checked without torch).
    stem: Literal["torchvision", "no-pool", "full-res"] = Field(
        "torchvision", description="how a ResNet-family model built from scratch: or torchvision: downsamples "
                                   "its input before the first block: torchvision's 7x7/2 conv and max-pool (for "
                                   "224 px); no-pool: without the max-pool; full-res: also a stride-1 conv, as "
                                   "CIFAR ResNets (for 28-32 px images; about 4x and 16x the blocks' compute)")


class ExportConfig(Section):
    onnx: bool = Field(False, description="export the final float model and the teacher to ONNX, check parity, "
                       "time onnxruntime; "
                       "with static int8 also an int8 ONNX by onnxruntime's quantizer, gated like the torch int8 model")
    opset: int = Field(18, ge=13, le=23)
    parity_atol: float = Field(1e-3, gt=0, description="max abs logit difference an export may have")


class EvaluateConfig(Section):
    threads: int = Field(1, ge=1)
    latency_repeats: int = Field(30, ge=5)
    throughput_batch: int = Field(64, ge=1)
    speed_rounds: int = Field(3, ge=1, description="latency/throughput rounds taking turns over the candidates; "
                                                   "the median is reported")
    throughput_seconds: float = Field(0.25, gt=0, description="each throughput measurement times batches for at "
                                                              "least this long")


# The corruptions compression/corruptions.py makes (listed here too: a config is checked without torch).
CORRUPTION_NAMES = ("gaussian_noise", "shot_noise", "impulse_noise", "gaussian_blur", "jpeg", "contrast", "brightness",
                    "pixelate", "affine")


class FidelityConfig(Section):
    """The "what compression changed" report (docs/fidelity.md): every candidate against the teacher, an int8
    model also against the float model it was made from."""

    enabled: bool = True
    bootstrap: int = Field(1000, ge=100, description="resamples of the paired bootstrap interval of the accuracy drop")
    corruption_images: int | None = Field(100, ge=1, description="test images scored under corruptions, a stratified "
                                                                 "subset (the same share of every class); None: all")
    corruptions: list[Literal[CORRUPTION_NAMES]] = Field(list(CORRUPTION_NAMES),
                                                         description="[]: no robustness figures")
    severities: list[Literal[1, 2, 3]] = Field([1, 2, 3], min_length=1)
    attribution_images: int = Field(8, ge=0, description="test images whose occlusion maps are compared; 0: none")
    grid_images: int = Field(12, ge=1, le=60, description="forgotten images shown in each candidate's grid")

    @field_validator("corruptions", "severities")
    @classmethod
    def _unique(cls, value):
        return without_duplicates(value)


class GatesConfig(Section):
    """Quality gates of the @champion alias, each optional (None: not checked), read from the fidelity
    report against the teacher (docs/fidelity.md). A candidate that fails one is not registered @champion."""

    max_drop_ci_high: float | None = Field(None, ge=0, le=1, description="upper end of the 95% interval of the test "
                                                                          "accuracy drop vs the teacher "
                                                                          "(0.01 = 1 point)")
    max_images_lost: int | None = Field(None, ge=0, description="test images the teacher gets right and the candidate "
                                                                "gets wrong")
    max_class_drop: float | None = Field(None, ge=0, le=1, description="largest drop of one class's test accuracy")
    max_ece_increase: float | None = Field(None, ge=0, le=1, description="ECE after temperature scaling, candidate "
                                                                          "minus teacher")
    max_relative_corruption_error: float | None = Field(None, gt=0, description="error under corruptions as a "
                                                                                "multiple of the teacher's")
    min_agreement: float | None = Field(None, ge=0, le=1, description="share of test images where the candidate "
                                                                      "predicts what the teacher predicts")

    def limits(self) -> dict[str, float]:
        """The gates that are set: {name: limit}."""
        return {name: value for name, value in self.model_dump().items() if value is not None}


class RegisterConfig(Section):
    enabled: bool = True
    model_name: str = Field("shrinkflow-model", pattern=r"^[\w.\-]+$")
    max_accuracy_drop: float = Field(0.01, ge=0, le=1, description="vs the teacher, as a fraction (0.01 = 1 point)")
    objective: Literal["params", "macs", "latency", "size"] = "params"
    runtime: Literal["onnxruntime", "torch"] = Field(
        "onnxruntime", description="what the registered model runs on: onnxruntime where the chosen model has a "
                                   "usable ONNX export (export.onnx), else torch")
    gates: GatesConfig = GatesConfig()


ENDPOINT_PATTERN = re.compile(r"^[\w.\-]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$")


class DistributedConfig(Section):
    """Data-parallel training (torch DDP) of fine-tune, distillation and the prune stage's recovery: the
    stage's task starts the processes with torch's launcher and waits for them."""

    processes_per_node: int = Field(1, ge=1, description="training processes on each machine: on CPU at most one "
                                                         "per core, on CUDA one per GPU")
    nodes: int = Field(1, ge=1, description="machines; each one but the pipeline's runs `shrinkflow node`")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl when training on CUDA, else gloo")
    rdzv_endpoint: str | None = Field(None, description="host:port where the machines meet (nodes > 1); the "
                                                        "pipeline's machine hosts it")
    timeout_seconds: float = Field(1800.0, gt=0, description="how long processes wait for each other")

    # Where and how the processes meet changes no result; how many train does (BatchNorm sees each process's
    # share of a batch), so the counts stay in the stages' cache keys.
    RUN_ONLY: ClassVar[set] = {"backend", "rdzv_endpoint", "timeout_seconds"}

    @property
    def world_size(self) -> int:
        return self.processes_per_node * self.nodes

    @field_validator("rdzv_endpoint")
    @classmethod
    def _endpoint(cls, value):
        if value is not None and not ENDPOINT_PATTERN.match(value):
            raise ValueError(f"{value!r} is not host:port")
        return value

    @model_validator(mode="after")
    def _nodes(self):
        if self.nodes > 1 and not self.rdzv_endpoint:
            raise ValueError("nodes > 1 needs rdzv_endpoint (host:port of the pipeline's machine)")
        return self


class TrackingConfig(Section):
    uri: str | None = Field(None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI or "
                                              "sqlite:///mlflow.db in the project")
    experiment: str = "shrinkflow"


# What a search may vary (issue: depth, width, importance, KD temperature and weight, int8 on/off).
SEARCH_KNOBS = ("trim.keep_per_stage", "prune.ratio", "prune.importance", "distill.temperature", "distill.alpha",
                "distill.train.lr", "quantize.enabled")
CHOICE_KNOBS = ("trim.keep_per_stage", "prune.importance", "quantize.enabled")
SHARE_PATTERN = re.compile(r"^\s*(\d+(\.\d+)?)\s*%\s*$")


def _one_budget(value):
    """A budget limit: a positive finite number (YAML's "3e6" text too) or a share such as "10%"."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{value!r} is neither a number nor a share like \"10%\"")
    if isinstance(value, str) and not SHARE_PATTERN.match(value):
        try:  # YAML reads 3e6 as text
            value = float(value)
        except ValueError:
            raise ValueError(f"{value!r} is neither a number nor a share like \"10%\"") from None
    if isinstance(value, str):
        share = float(SHARE_PATTERN.match(value).group(1))
        if not 0 < share <= 100:
            raise ValueError(f"{value} must be more than 0% and at most 100% of the teacher")
    elif not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{value} must be a finite number greater than 0")
    return value


class BudgetConfig(Section):
    metric: Literal["macs", "params", "size_bytes", "latency_ms"] = "macs"
    max: float | str | list[float | str] = Field(
        "10%", description="a number, or a share of the fine-tuned teacher such as \"10%\"; or a list of them: "
                           "one search, one registered model per target")
    max_accuracy_drop: float = Field(0.01, ge=0, le=1, description="vs the fine-tuned teacher on the val split")

    @field_validator("max", mode="before")
    @classmethod
    def _max(cls, value):
        if not isinstance(value, list):
            return _one_budget(value)
        if not value:
            raise ValueError("the list of targets is empty; give at least one budget")
        targets = [_one_budget(v) for v in value]
        labels = [str(v).strip() for v in targets]
        for i, label in enumerate(labels):
            if label in labels[:i]:
                raise ValueError(f"target {label} is given twice")
        return targets[0] if len(targets) == 1 else targets

    def targets(self) -> list[float | str]:
        """The budgets one search registers a model for, in the order given."""
        return list(self.max) if isinstance(self.max, list) else [self.max]


class KnobConfig(Section):
    """One knob of the search space: `choices`, or a float range `low`..`high` (optionally `log`)."""

    choices: list | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False

    @model_validator(mode="after")
    def _one_kind(self):
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            if not self.choices:
                raise ValueError("choices is empty")
        elif self.low is None or self.high is None:
            raise ValueError("give choices, or both low and high")
        elif not self.low < self.high:
            raise ValueError(f"low {self.low} must be below high {self.high}")
        elif self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


DEFAULT_SPACE = {"trim.keep_per_stage": {"choices": [1, 2]}, "prune.ratio": {"low": 0.2, "high": 0.8},
                 "distill.temperature": {"low": 1.0, "high": 8.0}, "quantize.enabled": {"choices": [True, False]}}


class SearchConfig(Section):
    # How many trials run, at once, where: they change no trial's result, so no cache key or study holds them.
    RUN_ONLY: ClassVar[set] = {"trials", "parallel", "top_k", "dask_address"}

    budget: BudgetConfig = BudgetConfig()
    space: dict[str, KnobConfig] = Field(default_factory=lambda: {k: KnobConfig(**v) for k, v in DEFAULT_SPACE.items()})
    trials: int = Field(8, ge=1, description="trials in all, a resumed search included")
    parallel: int = Field(2, ge=1, description="trials at once (Dask workers of a local cluster)")
    seed: int | None = Field(None, ge=0, description="the sampler's seed; default the pipeline seed")
    trial_epochs: int = Field(1, ge=1, description="distillation and recovery epochs of a trial (its fidelity)")
    top_k: int = Field(2, ge=0, description="best feasible trials trained again at the config's full epochs")
    sampler: Literal["tpe", "grid"] = Field(
        "tpe", description="tpe: Optuna's TPE; grid: the grid's points in a seeded random order, at most `trials` "
                           "of them (all with trials >= the grid's size)")
    grid_points: int = Field(3, ge=2, description="values per float range of the grid sampler")
    # hyperband by default: measured on the quickstart search against none and successive halving (README,
    # "Trials stop early"), it went through trials faster than none and, unlike successive halving with a
    # handful of trials, did not stop the trials that start slowly before they could catch up.
    pruner: Literal["none", "successive_halving", "hyperband"] = Field(
        "hyperband", description="Optuna's pruner, stopping trials whose val accuracy per epoch is behind the "
                                 "others' at the same epoch; none: every trial runs to its end")
    dask_address: str | None = Field(None, description="tcp://host:8786 of an existing Dask scheduler")

    @field_validator("space")
    @classmethod
    def _space(cls, value):
        if not value:
            raise ValueError("the search space is empty; give at least one of " + ", ".join(SEARCH_KNOBS))
        unknown = sorted(set(value) - set(SEARCH_KNOBS))
        if unknown:
            raise ValueError(f"{unknown[0]} cannot be searched; use {', '.join(SEARCH_KNOBS)}")
        return value


def _with_setting(data: dict, dotted: str, value) -> dict:
    """`data` (a section's settings) with the setting at `dotted` ("train.lr") set to `value`, as it is."""
    *path, leaf = dotted.split(".")
    node = data
    for part in path:
        node = node[part]
    node[leaf] = value
    return data


# `register` is a stage name; pydantic warns that it hides the metaclass's ABC `register` method.
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


# Top-level settings that say where things go or what a run is called, never what it computes.
NOT_RESULTS = frozenset({"name", "output_dir", "tracking"})


class PipelineConfig(Section):
    name: str = "pipeline"
    seed: int = Field(0, ge=0)
    source: str = Field(..., description="torchvision:<arch>[:<weights>] | scratch:<arch> | models:/<name>@<alias> | "
                                         "models:/<name>/<version> | file:<path>")
    output_dir: str = "outputs"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    trim: TrimConfig = TrimConfig()
    distill: DistillConfig = DistillConfig()
    prune: PruneConfig = PruneConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    export: ExportConfig = ExportConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    fidelity: FidelityConfig = FidelityConfig()
    register: RegisterConfig = RegisterConfig()
    tracking: TrackingConfig = TrackingConfig()
    search: SearchConfig = SearchConfig()
    distributed: DistributedConfig = DistributedConfig()

    @model_validator(mode="after")
    def _search_space_values(self):
        """Every value a search may give a knob must be valid for that knob's setting."""
        for key, knob in self.search.space.items():
            section, field = key.split(".", 1)
            if knob.choices is None and key in CHOICE_KNOBS:
                raise ValueError(f"search.space.{key}: give choices (it is not a number range)")
            for value in knob.choices if knob.choices is not None else [knob.low, knob.high]:
                current = getattr(self, section)
                try:
                    type(current).model_validate(_with_setting(current.model_dump(), field, value))
                except ValidationError as err:
                    raise ValueError(f"search.space.{key}: {value!r}: "
                                     f"{err.errors()[0]['msg'].removeprefix('Value error, ')}") from None
        return self

    @model_validator(mode="after")
    def _gates_need_fidelity(self):
        gates = self.register.gates.limits()
        if gates and not self.fidelity.enabled:
            raise ValueError(f"register.gates.{next(iter(gates))} needs the fidelity report (fidelity.enabled: true)")
        if "max_relative_corruption_error" in gates and not self.fidelity.corruptions:
            raise ValueError("register.gates.max_relative_corruption_error needs fidelity.corruptions")
        return self

    @model_validator(mode="after")
    def _stem_needs_a_built_model(self):
        if self.model.stem != "torchvision" and not self.source.startswith(("scratch:", "torchvision:")):
            raise ValueError(f"model.stem {self.model.stem!r} applies to scratch: and torchvision: sources; "
                             f"{self.source} keeps the stem it was built with")
        return self

    @field_validator("source")
    @classmethod
    def _source(cls, value):
        if not SOURCE_PATTERN.match(value):
            raise ValueError(f"unknown source {value!r}; use torchvision:<arch>[:<weights>], scratch:<arch>, "
                             "models:/<name>@<alias>, models:/<name>/<version> or file:<path>")
        return value

    @model_validator(mode="after")
    def _one_seed(self):
        # The pipeline seed is the only seed: every stage's training uses it.
        for stage in (self.finetune, self.distill, self.prune):
            stage.train.seed = self.seed
        return self

    def stage_dict(self, *names: str) -> dict:
        """The settings a stage computes from, by section; "source" is the model source string, and of
        `search` only what changes a trial's result (not how many trials run, or where)."""
        out = {}
        for name in names:
            if name == "source":
                out[name] = self.source
            else:
                exclude = {"search": SearchConfig.RUN_ONLY, "data": DataConfig.RUN_ONLY,
                           "distributed": DistributedConfig.RUN_ONLY}.get(name)
                out[name] = json.loads(getattr(self, name).model_dump_json(exclude=exclude))
        return out

    def config_hash(self) -> str:
        """Equal for two runs of the same experiment: a hash of every setting that can change a result, not of
        where outputs and tracking go, what the run is called, or how its work is spread (the sections'
        RUN_ONLY settings). So a run and its `shrinkflow reproduce` share it, and `compare` groups them; the
        full config is still an artifact of every run."""
        settings = {}
        for name in type(self).model_fields:
            if name in NOT_RESULTS:
                continue
            value = getattr(self, name)
            settings[name] = self.stage_dict(name)[name] if isinstance(value, BaseModel) else value
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def resolve(self, path: str | None) -> Path | None:
        if path is None:
            return None
        p = Path(path)
        return p if p.is_absolute() else PROJECT_ROOT / p


def _parse_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: dict | None) -> dict:
    """Set dotted keys ("prune.ratio": 0.6) in a nested dict; unknown sections fail in validation."""
    for key, value in (overrides or {}).items():
        if isinstance(value, str):
            value = _parse_value(value)
        node = raw
        *path, leaf = key.split(".")
        for part in path:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {part} is not a section")
            node = child
        node[leaf] = value
    return raw


def parse_set_options(items: list[str]) -> dict:
    """--set key=value pairs as an overrides dict."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        overrides[key.strip()] = value
    return overrides


def format_validation_error(err: ValidationError, origin: str) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        message = "unknown key"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{origin}: {field + ': ' if field else ''}{message}{more}"


def load_config(path: str | Path, overrides: dict | None = None) -> PipelineConfig:
    """Read a YAML config (relative paths are relative to the project root), apply overrides, validate."""
    resolved = Path(path)
    if not resolved.is_absolute() and not resolved.exists():
        resolved = PROJECT_ROOT / resolved
    if resolved.is_dir():
        raise ConfigError(f"config {path} is a directory, not a YAML file")
    if not resolved.exists():
        raise ConfigError(f"config file {path} not found")
    if not resolved.is_file():  # /dev/null, a pipe: reading it would give defaults or hang
        raise ConfigError(f"config {path} is not a regular file")
    try:
        raw = yaml.safe_load(resolved.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start} cannot be decoded)") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: YAML syntax error{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    return config_from_dict(apply_overrides(raw, overrides), str(path))


def config_from_dict(raw: dict, origin: str = "config") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, origin)) from None
