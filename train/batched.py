"""Batched sweeps: K runs that share an architecture, dataset and every knob except learning rate
and seed, trained in one process as one stacked model, each recorded into its own store exactly
as a sequential run records it. The step is train/step.py's `StackedStep` (the same forward,
loss, SGD update, norms and schedule as a run's own `Step`: ``torch.func``'s
``stack_module_state``, and the model's ``stacked_forward`` or ``functional_call`` under
``vmap``), the loop train/loop.py's `train_steps` (the per-run `Trainer` and `Recorder` do the
host statistics, snapshots and checkpoints from the run's slice of the stacked weights); this
module chooses the runs that can share a stack and sets their stores up.

Supported: models without BatchNorm (``fcn``, ``cnn``), SGD with momentum / weight decay, CE or
focal loss, L1, any LR schedule, every stop criterion; a run that converges or diverges leaves
the stack. Runs that exist already (finished or interrupted) are not batched: a sweep finishes
or resumes them one by one, and an interrupted batched run resumes that way too.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import LrscopeError
from ..store.lock import RunLock
from .config import RunConfig
from .data import build_dataset, probe_subset
from .loop import RunResult, Trainer, create_store, pick_device, store_path, train_steps
from .models import MODELS
from .optim import make_optimizer
from .placement import Placed, choose, dataset_bytes
from .restore import build_model
from .step import StackedStep


def batch_key(cfg: RunConfig) -> str | None:
    """Runs with the same key can share a stack; None: this run cannot be batched (its model is
    not declared batchable in the registry, or it is not plain fp32 SGD)."""
    model = MODELS.get(cfg.model)
    if model is None or not model.batchable or cfg.optimizer != "sgd" or cfg.precision != "fp32":
        return None
    ident = cfg.identity()
    for k in ("lr", "seed"):
        ident.pop(k)
    import json

    return json.dumps(ident, sort_keys=True) + f"|{cfg.device}|{cfg.data_root}|{cfg.data_placement}"


def train_batched(configs: list[RunConfig], out: str | os.PathLike, *, progress: bool = True) -> list[RunResult]:
    """Train fresh runs `configs` (one batch_key) as one stack; each into its own store."""
    if not configs:
        return []
    keys = {batch_key(c) for c in configs}
    if len(keys) != 1 or None in keys:
        raise LrscopeError("train_batched: runs must share everything but lr and seed, with a batchable "
                           "model/optimizer")
    cfg0 = configs[0]
    for c in configs:
        c.validate()
    Path(out).mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg0.device)
    bundle = build_dataset(cfg0.dataset, seed=cfg0.data_seed, bias_conflicting_ratio=cfg0.bias_conflicting_ratio,
                           data_root=cfg0.data_root, val_fraction=cfg0.val_fraction, **cfg0.data_options)
    probe_idx = probe_subset(bundle, cfg0.probe_size, cfg0.data_seed)
    placement = choose(cfg0.data_placement, dataset_bytes(bundle), device)
    locks, writers, models, opts = [], [], [], []
    placed = None
    try:
        for c in configs:
            path = store_path(out, c.run_id())
            lock = RunLock(path)
            lock.acquire()
            locks.append(lock)
            if path.exists():
                raise LrscopeError(f"{path} exists: batched mode trains fresh runs only")
            torch.manual_seed(c.seed)
            model = build_model(c, bundle.input_shape, bundle.num_classes).to(device)
            opts.append(make_optimizer(c, model.parameters()))
            writers.append(create_store(path, c, bundle, model, probe_idx, device, lock, placement))
            models.append(model)
        # the data are placed once (on the device, in host memory or mapped), shared by every run's Trainer
        placed = Placed(bundle, placement, device)
        trainers = [Trainer(c, bundle, m, o, w, device, probe_idx, placed=placed)
                    for c, m, o, w in zip(configs, models, opts, writers)]
        K = len(configs)
        return train_steps(trainers, StackedStep(models, configs, device), progress=progress,
                           extra_timings={"batched_runs": K}, desc=f"batched x{K}", reason="training (batched)",
                           stopped="batched runs stopped at iteration {t} (checkpointed); re-run the sweep to "
                                   "resume them")
    finally:
        if placed is not None:
            placed.close()
        for lock in locks:
            lock.release()
