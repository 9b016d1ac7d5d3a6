"""The run configuration: one flat dataclass, stored verbatim as JSON in the run store."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw", "sam", "asam")
LOSSES = ("ce", "focal")
SCHEDULES = ("constant", "step", "cosine", "wsd")
STOPS = ("train-acc", "train-loss", "max-steps")
TRAIN_LOGITS = ("auto", "always", "final")
DEVICES = ("auto", "cpu", "cuda")

# Fields that change how a run is executed but not what it computes: left out of the run id
# and of the "same run?" check on resume.
EXECUTION_FIELDS = ("device", "data_root", "channels_last", "deterministic")
PRECISIONS = ("fp32", "bf16")

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}$")


@dataclass
class RunConfig:
    """Everything that defines one training run. Defaults follow the paper (PAPER.md)."""

    dataset: str = "parity"
    model: str = "fcn"
    lr: float = 0.1
    seed: int = 0  # initialisation and minibatch order
    data_seed: int = 0  # dataset generation / subsampling (shared by a sweep's seeds)
    batch_size: int = 100
    optimizer: str = "sgd"
    momentum: float = 0.0
    sam_rho: float = 0.05  # SAM/ASAM neighbourhood radius (Foret et al. 2021; Kwon et al. 2021)
    weight_decay: float = 0.0  # L2, as the optimizer's weight decay
    l1: float = 0.0  # L1 penalty coefficient added to the loss
    loss: str = "ce"
    focal_gamma: float = 2.0
    schedule: str = "constant"  # constant | step (x step_factor at step_at) | cosine | wsd
    step_at: int = 1000  # step schedule: the iteration at which the LR is multiplied by step_factor
    step_factor: float = 0.1
    warmup_steps: int = 0  # linear warm-up from 0 (any schedule; wsd's "warm-up")
    decay_fraction: float = 0.2  # wsd: the last fraction of max_steps decays linearly to 0
    stop: str = "train-acc"  # train-acc (100% training accuracy), train-loss (100% and loss < stop_loss), max-steps
    stop_loss: float = 1e-5
    max_steps: int = 20000
    bias_conflicting_ratio: float | None = None  # None: the dataset's paper default
    widths: list[int] | None = None  # hidden widths for the FCN; None: the model's default
    data_options: dict[str, Any] = field(default_factory=dict)  # dataset-specific knobs
    model_options: dict[str, Any] = field(default_factory=dict)  # model-specific knobs (cnn: width)
    weights: str | None = None  # a local state dict to initialise from (pretrained); never downloaded
    snapshot_every: int = 1000  # snapshots at 0,1,2,4,... below this, then every N steps, + final
    early_snapshots: str = "light"  # log-spaced early snapshots: light (probe subset only) or full
    checkpoint_every: int = 2000  # checkpoints (resume points) every N steps, + final
    probe_size: int = 1000  # test samples (group-balanced) whose activations are recorded
    train_logits: str = "auto"  # train-set logits at full snapshots: auto (when cheap), always, final
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 (autocast for forward passes; weights and optimizer stay fp32)
    channels_last: bool = False  # NHWC memory format for image models (faster convolutions on GPUs)
    deterministic: bool = False  # torch.use_deterministic_algorithms (bitwise-repeatable CUDA runs)
    data_root: str | None = None  # where file-based datasets live (not part of the run's identity)

    # ------------------------------------------------------------------ validation
    def validate(self) -> "RunConfig":
        """Raise ConfigError naming the first impossible value; return self."""
        from .data import DATASETS
        from .models import MODELS

        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; valid: {', '.join(sorted(DATASETS))}")
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; valid: {', '.join(sorted(MODELS))}")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("loss", self.loss, LOSSES)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("stop", self.stop, STOPS)
        _choice("train_logits", self.train_logits, TRAIN_LOGITS)
        _choice("early_snapshots", self.early_snapshots, ("light", "full"))
        _choice("device", self.device, DEVICES)
        _choice("precision", self.precision, PRECISIONS)
        for name in ("channels_last", "deterministic"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"learning rate must be a finite number > 0, got {self.lr}")
        _int_at_least("batch_size", self.batch_size, 1)
        _int_at_least("max_steps", self.max_steps, 1)
        _int_at_least("snapshot_every", self.snapshot_every, 1)
        _int_at_least("checkpoint_every", self.checkpoint_every, 1)
        _int_at_least("probe_size", self.probe_size, 2)
        _int_at_least("seed", self.seed, 0)
        _int_at_least("data_seed", self.data_seed, 0)
        _int_at_least("step_at", self.step_at, 0)
        _int_at_least("warmup_steps", self.warmup_steps, 0)
        if not (0 < self.decay_fraction <= 1):
            raise ConfigError(f"decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if self.warmup_steps >= self.max_steps:
            raise ConfigError(f"warmup_steps ({self.warmup_steps}) must be below max_steps ({self.max_steps})")
        if not (0 <= self.momentum < 1):
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        for name in ("weight_decay", "l1", "focal_gamma", "step_factor"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {v}")
        for name in ("sam_rho", "stop_loss"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {v}")
        r = self.bias_conflicting_ratio
        if r is not None and not (0 <= r <= 1):
            raise ConfigError(f"bias-conflicting ratio must be in [0, 1], got {r}")
        if self.widths is not None:
            if not self.widths or any((not isinstance(w, int)) or w < 1 for w in self.widths):
                raise ConfigError(f"widths must be a non-empty list of positive integers, got {self.widths}")
        return self

    # ------------------------------------------------------------------ schedule
    def lr_at(self, t):
        """The learning rate used by optimizer step t (0-based); `t` may be an int or an array."""
        import numpy as np

        t = np.asarray(t, dtype=np.float64)
        if self.schedule == "step":
            f = np.where(t >= self.step_at, self.step_factor, 1.0)
        elif self.schedule == "cosine":
            f = 0.5 * (1 + np.cos(np.pi * np.clip(t / self.max_steps, 0, 1)))
        elif self.schedule == "wsd":  # warm-up, stable, then linear decay to 0 over the last fraction
            start = self.max_steps * (1 - self.decay_fraction)
            f = np.clip((self.max_steps - t) / (self.max_steps - start), 0, 1)
        else:
            f = np.ones_like(t)
        if self.warmup_steps:
            f = f * np.minimum(1.0, (t + 1) / self.warmup_steps)
        out = self.lr * f
        return float(out) if out.ndim == 0 else out

    # ------------------------------------------------------------------ identity
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def identity(self) -> dict[str, Any]:
        d = self.to_dict()
        for k in EXECUTION_FIELDS:
            d.pop(k)
        return d

    def run_id(self) -> str:
        """Readable id: dataset-model-lr-seed, plus a short hash when any other field differs
        from its default (so two different runs never share a store)."""
        base = f"{self.dataset}-{self.model}-lr{self.lr:g}-s{self.seed}"
        default = RunConfig(dataset=self.dataset, model=self.model, lr=self.lr, seed=self.seed)
        if self.identity() == default.identity():
            return base
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return f"{base}-{hashlib.sha1(blob).hexdigest()[:8]}"


def check_run_id(run_id: str) -> str:
    """A run id becomes a directory name inside the output folder: no separators, no '..'."""
    if not RUN_ID_RE.match(run_id) or ".." in run_id:
        raise ConfigError(
            f"run id {run_id!r} is not allowed: use letters, digits and . _ = + - "
            "(no path separators, no '..', not starting with a dot)"
        )
    return run_id


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


def _int_at_least(name: str, value: int, lo: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {value}")
