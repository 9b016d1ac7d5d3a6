"""PyTorch Lightning: a `Callback` that records a ``lightning.Trainer``'s run into a run store.

The only module of lrscope that imports ``lightning`` (the optional extra: ``pip install
lrscope[lightning]``). It drives `lrscope.Recorder` (train/api.py), so the store is the one
``lrtrain`` writes.

The contract with the LightningModule:

- ``training_step`` returns a dict with ``loss`` (what Lightning optimises), ``logits`` (the
  minibatch's (batch, classes) outputs) and ``ids`` (the minibatch's positions in the training
  split of `data`: put them in the dataset, e.g. ``TensorDataset(x, y, torch.arange(len(x)))``);
- the module's ``forward(x)`` is the network (logits from the data's inputs as stored) and
  `features_at` names the module inside it whose input is the penultimate representation
  (``"head"``, ``"net.fc"``);
- automatic optimization with one optimizer and no gradient accumulation (the callback checks).

The step's learning rate is read just before the optimizer steps (so a per-step scheduler's next
value is not mistaken for it). `config` needs ``batch_size`` (the largest minibatch) and takes
``max_steps`` from the Trainer (``trainer.estimated_stepping_batches``) when it is not given. When
the run ends early (divergence, or a stop criterion asked for in the config) the callback sets
``trainer.should_stop``. An interrupted run resumes when Lightning resumes at the step of lrscope's
last checkpoint (``trainer.fit(..., ckpt_path=...)`` with a ``ModelCheckpoint`` saving every
``checkpoint_every`` steps); a fresh Lightning run on an interrupted store is refused in one line.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl

from ..errors import ConfigError, LrscopeError
from .api import Recorder


class LrscopeCallback(pl.Callback):
    """Record the run of a ``lightning.Trainer`` (see the module docstring).

    out, data, config, features_at, name: as for `lrscope.Recorder`.
    """

    def __init__(self, out="runs", *, data, config: dict, features_at: str | None = None, name: str | None = None):
        super().__init__()
        if not isinstance(config, dict):
            raise ConfigError(f"config must be a dict of settings, got {type(config).__name__}")
        self.out, self.data, self.config, self.features_at, self.name = out, data, dict(config), features_at, name
        self.recorder: Recorder | None = None
        self._lr: float | None = None
        self._stepped_at = -1

    # ------------------------------------------------------------------ start
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise ConfigError(f"LrscopeCallback records one optimizer, the module has {len(trainer.optimizers)}")
        if trainer.accumulate_grad_batches != 1:
            raise ConfigError("LrscopeCallback: gradient accumulation is not supported (one minibatch a step)")
        if not pl_module.automatic_optimization:
            raise ConfigError("LrscopeCallback needs automatic optimization (call Recorder.step in a manual loop)")
        config = dict(self.config)
        if "max_steps" not in config:
            steps = trainer.estimated_stepping_batches
            if not isinstance(steps, (int, float)) or not math.isfinite(steps) or steps < 1:
                raise ConfigError("config needs max_steps: the Trainer's run has no finite length")
            config["max_steps"] = int(steps)
        self.recorder = Recorder(self.out, model=pl_module, features_at=self.features_at,
                                 optimizer=trainer.optimizers[0], data=self.data, config=config, name=self.name)
        start = self.recorder.resume()
        if start != trainer.global_step and not self.recorder.ended:
            self.recorder.close(finished=False)
            raise LrscopeError(
                f"{self.recorder.path.name}: the store goes on from step {start}, Lightning from step "
                f"{trainer.global_step}: resume Lightning from its checkpoint at step {start} (ckpt_path=...), or "
                "record under another name")
        self._stepped_at = trainer.global_step

    # ------------------------------------------------------------------ each step
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._lr = float(optimizer.param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx: int) -> None:
        rec = self.recorder
        if rec is None or trainer.global_step == self._stepped_at:  # no optimizer step was taken
            return
        self._stepped_at = trainer.global_step
        if rec.ended:
            trainer.should_stop = True
            return
        if not isinstance(outputs, dict) or not {"logits", "ids"} <= set(outputs):
            raise ConfigError("LrscopeCallback: training_step must return a dict with loss, logits and ids (the "
                              "minibatch's positions in the training split)")
        if rec.step(outputs["ids"], outputs["logits"], lr=self._lr, loss=outputs.get("loss")):
            trainer.should_stop = True

    # ------------------------------------------------------------------ the end
    def on_train_end(self, trainer, pl_module) -> None:
        if self.recorder is not None:
            self.recorder.close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.recorder is not None and not self.recorder.ended:
            self.recorder.__exit__(type(exception), exception, None)  # resumable: running or failed
