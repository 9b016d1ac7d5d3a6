"""The run configuration: one flat dataclass, stored verbatim as JSON in the run store."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..store.schema import FULL_LOGITS_MAX_CLASSES, LOG_SETTINGS, NAME_RE, RUN_ID_RE  # noqa: F401 - NAME_RE: for recipes.py
from .checks import (  # noqa: F401 - the names the config's users import from here
    MAX_COUNT,
    MAX_DEPTH,
    MAX_PARAMS,
    MAX_SEED,
    MAX_WIDTH,
    check_value,
    describe_range,
    number_text,
    option,
    shown_value,
)

MAX_LR = 3.4028234663852886e38  # float32's largest finite value
OPTIMIZERS = ("sgd", "adam", "adamw", "sam", "asam", "kron")
LOSSES = ("ce", "focal")
SCHEDULES = ("constant", "step", "cosine", "wsd")
STOPS = ("train-acc", "train-loss", "max-steps")
TRAIN_LOGITS = ("auto", "always", "final")
DEVICES = ("auto", "cpu", "cuda")
DATA_PLACEMENTS = ("auto", "device", "host", "mmap")  # train/placement.py

PRECISIONS = ("fp32", "bf16")




def knob(default: Any = dataclasses.MISSING, *, factory=None, help: str = "", lo=None, hi=None,
         lo_open: bool = False, hi_open: bool = False, choices=None, label: str | None = None,
         execution: bool = False):
    """A RunConfig field with its knob declared once: help text, range or choices, and whether it
    is an execution detail (outside the run's identity). The type comes from the annotation.
    `lrtrain run` derives its option from all of it (cli/train.py: `config_options`); in the help
    text, a field name in backticks reads as its option there (`max_steps`: --max-steps)."""
    md = {"help": help, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "choices": choices,
          "label": label, "execution": execution}
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


@dataclass
class RunConfig:
    """Everything that defines one training run. Defaults follow the paper (Barsbey et al. 2025, supplement §C)."""

    dataset: str = knob("parity", help="dataset name (see `lrtrain datasets`), or a plugin's import path "
                                       "package.module:function")
    model: str = knob("fcn", help="model name (see `lrtrain models`), or a plugin's import path "
                                  "package.module:function")
    # at most float32's largest value: a larger LR cannot scale a float32 gradient (a huge one that
    # fits just diverges, a result)
    lr: float = knob(0.1, lo=0, lo_open=True, hi=MAX_LR, label="learning rate (lr)", help="learning rate")
    seed: int = knob(0, lo=0, hi=MAX_SEED, help="initialisation and minibatch-order seed")
    data_seed: int = knob(0, lo=0, hi=MAX_SEED,
                          help="dataset generation and subsampling seed (shared by a sweep's seeds)")
    batch_size: int = knob(100, lo=1, hi=MAX_COUNT, help="minibatch size")
    optimizer: str = knob("sgd", choices=OPTIMIZERS,
                          help="the optimizer; sam and asam take their base step with SGD, `momentum` and "
                               "`weight_decay`; kron is PSGD-Kron (heavyball's PSGDKron: `kron_beta`, "
                               "`kron_precond_lr`, `kron_max_size_triangular`, `weight_decay`)")
    momentum: float = knob(0.0, lo=0, hi=1, hi_open=True, help="SGD momentum")
    sam_rho: float = knob(0.05, lo=0, lo_open=True,
                          help="SAM/ASAM neighbourhood radius (Foret et al. 2021; Kwon et al. 2021)")
    weight_decay: float = knob(0.0, lo=0, help="L2, as the optimizer's weight decay")
    kron_beta: float = knob(0.9, lo=0, hi=1, hi_open=True,
                            help="PSGD-Kron's momentum (the gradient average it preconditions; heavyball's default)")
    kron_precond_lr: float = knob(0.1, lo=0, lo_open=True,
                                  help="PSGD-Kron's preconditioner learning rate (heavyball's default)")
    kron_max_size_triangular: int = knob(2048, lo=1, hi=MAX_COUNT,
                                         help="PSGD-Kron: a tensor dimension above this size gets a diagonal "
                                              "preconditioner factor instead of a triangular one (memory)")
    l1: float = knob(0.0, lo=0, help="L1 penalty coefficient added to the loss")
    loss: str = knob("ce", choices=LOSSES, help="cross-entropy, or the focal loss (Lin et al. 2017)")
    focal_gamma: float = knob(2.0, lo=0, help="the focal loss's exponent gamma")
    schedule: str = knob("constant", choices=SCHEDULES,
                         help="LR schedule: constant | step (x `step_factor` at `step_at`) | cosine (to 0 at "
                              "`max_steps`) | wsd (warm-up, stable, linear decay over the last `decay_fraction`)")
    step_at: int = knob(1000, lo=0, hi=MAX_COUNT,
                        help="the step schedule's iteration at which the LR is multiplied by `step_factor`")
    step_factor: float = knob(0.1, lo=0, help="the step schedule's LR multiplier")
    warmup_steps: int = knob(0, lo=0, hi=MAX_COUNT,
                             help="linear LR warm-up from 0 over this many steps (any schedule; wsd's warm-up)")
    decay_fraction: float = knob(0.2, lo=0, hi=1, lo_open=True,
                                 help="the wsd schedule's decay: the LR falls linearly to 0 over this last fraction "
                                      "of `max_steps`")
    stop: str = knob("train-acc", choices=STOPS,
                     help="when to stop: train-acc at 100% training accuracy; train-loss at 100% and a loss below "
                          "stop_loss (train-loss=1e-5 on the command line); max-steps after `max_steps`")
    stop_loss: float = knob(1e-5, lo=0, lo_open=True, help="the train-loss stop's loss threshold")
    max_steps: int = knob(20000, lo=1, hi=MAX_COUNT, help="upper bound on optimizer steps")
    bias_conflicting_ratio: float | None = knob(None, lo=0, hi=1, label="bias-conflicting ratio",
                                                help="fraction of bias-conflicting training samples (default: the "
                                                     "dataset's paper value, see `lrtrain datasets`)")
    val_fraction: float = knob(0.1, lo=0, hi=0.5,
                               help="size of the validation split (model selection, the selection probe) when the "
                                    "dataset ships none (Waterbirds, CelebA and image_folder's val rows are used as "
                                    "they are): the synthetic sets (parity, moon_star) draw this share of n_train more "
                                    "samples, the training split unchanged; the others hold this share of the training "
                                    "pool out, stratified by (y, b) group, drawn from `data_seed`, and train on the "
                                    "rest; 0: no validation split (stores written before this field)")
    widths: list[int] | None = knob(None, lo=1, hi=MAX_WIDTH,
                                    help="hidden widths of the FCN (default: the paper's FCN for the dataset - 3x200 "
                                         "on "
                                         "parity and moon_star, 2x1024 on Colored/Double MNIST, 2x2048 on "
                                         "MNIST-CIFAR and Corrupted CIFAR-10; elsewhere 3x200 on vectors, 2x1024 "
                                         "on images)")
    data_options: dict[str, Any] = knob(factory=dict, help="the dataset's own options (see `lrtrain datasets`)")
    model_options: dict[str, Any] = knob(factory=dict, help="the model's own options (see `lrtrain models`)")
    features_at: str | None = knob(None, help="plugin models: the module whose input is the penultimate "
                                              "representation (a name from the model's named_modules(), e.g. fc; "
                                              "the classifier, the model's last step); built-in models split "
                                              "their features themselves")
    weights: str | None = knob(None, help="initialise from a local state-dict file (e.g. torchvision's ImageNet "
                                          "Swin-T); tensors that do not fit, such as the head, stay freshly "
                                          "initialised; nothing is downloaded")
    snapshot_every: int = knob(1000, lo=1, hi=MAX_COUNT,
                               help="snapshot period in steps (plus log-spaced snapshots 0, 1, 2, 4, ... before "
                                    "it and a final one)")
    early_snapshots: str = knob("light", choices=("light", "full"),
                                help="log-spaced early snapshots: light (probe subset only, cheap) or full "
                                     "(whole test set)")
    checkpoint_every: int = knob(2000, lo=1, hi=MAX_COUNT,
                                 help="checkpoint (resume point) period in steps, plus a final one")
    probe_size: int = knob(1000, lo=2, hi=MAX_COUNT,
                           help="group-balanced test samples whose penultimate activations are recorded")
    train_logits: str = knob("auto", choices=TRAIN_LOGITS,
                             help="train-set logits at full snapshots: auto (when a pass costs <= 2% of the "
                                  "steps between snapshots), always, or final (the last snapshot only)")
    log_logits: str = knob("auto", choices=LOG_SETTINGS,
                           help="the per-step minibatch record: full (every slot's logits, float16: 2 bytes a "
                                f"class), summary (loss, true-class log-probability and logit, margin, correct: "
                                f"13 bytes a slot, what the probes read), or auto (full up to "
                                f"{FULL_LOGITS_MAX_CLASSES} classes, summary above); the store records the "
                                "resolved one")
    device: str = knob("auto", choices=DEVICES, execution=True, help="where to train (auto: CUDA when available)")
    precision: str = knob("fp32", choices=PRECISIONS,
                          help="forward-pass precision: bf16 autocasts them (weights and optimizer state stay fp32)")
    channels_last: bool = knob(False, execution=True,
                               help="NHWC memory format for image models (faster convolutions on GPUs)")
    deterministic: bool = knob(False, execution=True,
                               help="deterministic algorithms only (bitwise-repeatable CUDA runs)")
    data_placement: str = knob("auto", choices=DATA_PLACEMENTS, execution=True,
                               help="where the dataset lives while training: device (whole on the device), host "
                                    "(host memory, each minibatch copied over ahead of its step), mmap (a "
                                    "memory-mapped .npy cache on disk), or auto (chosen from the dataset's size "
                                    "and the free device and host memory)")
    data_root: str | None = knob(None, execution=True,
                                 help="folder of the file-based datasets (MNIST IDX files, CIFAR batches, ...)")

    # ------------------------------------------------------------------ validation
    @classmethod
    def check_field(cls, name: str, value: Any) -> None:
        """Raise ConfigError unless `value` has the field's type (from its annotation) and lies in
        its declared range or choices. Cross-field rules are `validate`'s."""
        f = _FIELDS.get(name)
        if f is None:
            raise ConfigError(f"unknown config field {name!r}; valid: {', '.join(sorted(_FIELDS))}")
        kind, nullable, item = _HINTS[name]
        md = f.metadata
        check_value(md["label"] or name, value, kind, lo=md["lo"], hi=md["hi"], lo_open=md["lo_open"],
                    hi_open=md["hi_open"], choices=md["choices"], nullable=nullable, item=item)

    def validate(self) -> "RunConfig":
        """Raise ConfigError naming the first impossible value; return self. Every field is checked
        against its annotation and declared range; the dataset's and model's options against
        theirs; nothing is built."""
        from . import plugins
        from .data import check_data_options
        from .data import entry as dataset_entry
        from .models import MODELS, check_model_options
        from .models import entry as model_entry

        for name in ("dataset", "model"):
            self.check_field(name, getattr(self, name))
            setattr(self, name, plugins.canonical(name, getattr(self, name)))  # an entry point's name: its path
        data = dataset_entry(self.dataset)  # a plugin's: imported here (one-line error when it cannot be)
        model_entry(self.model)
        if self.features_at is not None:
            self.check_field("features_at", self.features_at)
            if self.model in MODELS:
                raise ConfigError(f"features_at is for plugin models; built-in model {self.model!r} splits its "
                                  f"penultimate features itself (leave --features-at out)")
            if not self.features_at:
                raise ConfigError("features_at must name a module (e.g. fc), got an empty string")
        for f in dataclasses.fields(self):
            self.check_field(f.name, getattr(self, f.name))
        if self.warmup_steps >= self.max_steps:
            raise ConfigError(f"warmup_steps ({self.warmup_steps}) must be below max_steps ({self.max_steps})")
        if self.weights == "":
            raise ConfigError("weights must be a file path or null, got an empty string")
        if data.rho_train is None and self.bias_conflicting_ratio is not None:
            raise ConfigError(f"{self.dataset!r} has no bias-conflicting ratio to set (its bias is natural or absent)")
        check_data_options(self.dataset, self.data_options)
        check_model_options(self.model, self.model_options, widths=self.widths)
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
    def from_stored(cls, d: dict[str, Any]) -> "RunConfig":
        """The config of a run store: as `from_dict`, but a field the store's config lacks (it was
        written before the field existed) takes the value that run had in effect (`LEGACY_VALUES`),
        not today's default."""
        if isinstance(d, dict):
            d = {**{k: v for k, v in LEGACY_VALUES.items() if k not in d}, **d}
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a run config is a mapping of field names to values, got {type(d).__name__}")
        if not all(isinstance(k, str) for k in d):
            raise ConfigError("a run config's field names are strings")
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
        # a plugin's import path package.module:function reads package.module.function in the id
        base = f"{self.dataset.replace(':', '.')}-{self.model.replace(':', '.')}-lr{self.lr:g}-s{self.seed}"
        default = RunConfig(dataset=self.dataset, model=self.model, lr=self.lr, seed=self.seed)
        if self.identity() == default.identity():
            return base
        ident = self.identity()
        for k in LATE_FIELDS:  # at their default, fields added later leave earlier run ids as they were
            if ident[k] == _FIELDS[k].default:
                ident.pop(k)
        for k, v in LEGACY_VALUES.items():  # and at the value earlier runs had: their ids stay too
            if ident.get(k) == v:
                ident.pop(k)
        plain = default.identity()
        for k in (*LATE_FIELDS, *LEGACY_VALUES):
            plain.pop(k, None)
        if ident == plain:  # a default run of an earlier version (val_fraction 0): its id had no hash
            return base
        if self.optimizer != "kron":  # the kron knobs do not touch other runs: ids stay as before them
            for k in KRON_FIELDS:
                ident.pop(k)
        blob = json.dumps(ident, sort_keys=True).encode()
        return f"{base}-{hashlib.sha1(blob).hexdigest()[:8]}"


_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
KRON_FIELDS = tuple(n for n in _FIELDS if n.startswith("kron_"))


def _hint(tp) -> tuple[type, bool, type | None]:
    """(kind, nullable, list item type) of an annotation such as ``list[int] | None``."""
    import types
    import typing

    nullable = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(tp))
        (tp,) = args
    origin = typing.get_origin(tp)
    if origin is list:
        return list, nullable, typing.get_args(tp)[0]
    if origin is dict:
        return dict, nullable, None
    return tp, nullable, None


def _hints() -> dict[str, tuple[type, bool, type | None]]:
    import typing

    return {name: _hint(tp) for name, tp in typing.get_type_hints(RunConfig).items()}


_HINTS = _hints()


def field_type(name: str) -> tuple[type, bool, type | None]:
    """(kind, nullable, list item type) of a RunConfig field, from its annotation."""
    return _HINTS[name]

# Fields that change how a run is executed but not what it computes: left out of the run id
# and of the "same run?" check on resume (declared with execution=True).
EXECUTION_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.metadata.get("execution"))
# Identity fields added after run ids were first given out: left out of the id's hash while at their
# default, so that the stores of earlier versions (whose configs lack them: from_dict gives the
# default) keep their names and resume. A store's config always holds them.
LATE_FIELDS = ("log_logits", "features_at", "val_fraction")
# Identity fields whose default differs from what runs made before them did: a stored config without
# the field ran with this value (`RunConfig.from_stored` gives it), and the run id leaves the field out
# of its hash at this value as at its default. So a store of an earlier version keeps its id and
# resumes with --val-fraction 0 (a default config of today, val_fraction 0.1, maps to the same id
# and is refused there as a different config: it would train on other samples).
LEGACY_VALUES = {"val_fraction": 0.0}


def check_run_id(run_id: str) -> str:
    """A run id becomes a directory name inside the output folder: no separators, no '..'."""
    if not RUN_ID_RE.match(run_id) or ".." in run_id:
        raise ConfigError(
            f"run id {run_id!r} is not allowed: use letters, digits and . _ = + - "
            "(no path separators, no '..', not starting with a dot)"
        )
    return run_id
