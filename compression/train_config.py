"""The training settings every stage shares. No torch import here: configs are validated (and bad values
reported) without loading torch."""

from __future__ import annotations

from dataclasses import dataclass

from compression import CompressionError


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str = "cosine"
    step_size: int = 10
    gamma: float = 0.1
    label_smoothing: float = 0.0
    patience: int | None = None
    augment: bool = False
    freeze_norm: bool = False  # BatchNorm keeps its running statistics and normalises with them while training
    seed: int = 0
    device: str = "auto"
    # Mixed precision. True: on CUDA (bf16 where the GPU has it, else fp16 with a gradient scaler), float32
    # elsewhere. "bf16": bf16 autocast on CUDA and also on a CPU with native bf16 (AVX512-BF16 or AMX), where
    # wide convolutions can train faster than in float32 and small ones slower (bench/precision.py measures
    # both); refused on a device without it.
    amp: bool | str = True
    progress_seconds: float = 15.0
    checkpoint_seconds: float = 60.0  # see fit

    # Lets pydantic models embed this dataclass and reject unknown keys.
    __pydantic_config__ = {"extra": "forbid"}

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 0,
            "batch_size": self.batch_size >= 2,
            "lr": self.lr > 0,
            "momentum": 0 <= self.momentum < 1,
            "weight_decay": self.weight_decay >= 0,
            "step_size": self.step_size >= 1,
            "gamma": 0 < self.gamma <= 1,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "patience": self.patience is None or self.patience >= 1,
            "checkpoint_seconds": self.checkpoint_seconds >= 0,
            "optimizer": self.optimizer in ("sgd", "adamw"),
            "scheduler": self.scheduler in ("cosine", "step", "none"),
            "device": self.device in ("auto", "cpu", "cuda", "mps"),
            "amp": isinstance(self.amp, bool) or self.amp == "bf16",
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            name = bad[0]
            raise CompressionError(f"invalid training setting {name}={getattr(self, name)!r}")
