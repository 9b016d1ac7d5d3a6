"""Batched sweeps: K runs that share an architecture, dataset and every knob except learning rate
and seed, trained in one process as one stacked model (``torch.func``: ``stack_module_state``,
``functional_call``, ``vmap`` over ``grad_and_value``), each recorded into its own store exactly
as a sequential run records it (the per-run `Trainer` does the host statistics, snapshots and
checkpoints from its run's slice of the stacked weights).

Supported: models without BatchNorm (``fcn``, ``cnn``), SGD with momentum / weight decay, CE or
focal loss, L1, any LR schedule, every stop criterion; a run that converges or diverges leaves
the stack. Runs that exist already (finished or interrupted) are not batched: a sweep finishes
or resumes them one by one, and an interrupted batched run resumes that way too.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from ..errors import LrscopeError
from ..store.lock import RunLock
from .config import RunConfig
from .data import as_model_input, build_dataset, probe_subset
from .loop import RunResult, Trainer, _create_store, _StopFlag, pick_device, store_path
from .models import MODELS
from .optim import make_optimizer, per_sample_loss
from .placement import Placed, choose, dataset_bytes
from .recorder import Recorder, is_recording_point, recording_errors
from .restore import build_model


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


class _Stack:
    """The stacked weights and momentum buffers of the active runs, and the functional step."""

    def __init__(self, models, cfg: RunConfig, device):
        from torch.func import functional_call, grad_and_value, stack_module_state, vmap

        self.cfg = cfg
        params, buffers = stack_module_state(models)
        self.names = list(params)
        self.params = [params[n].detach().to(device) for n in self.names]
        self.bufs = [torch.zeros_like(p) for p in self.params] if cfg.momentum > 0 else None
        self.buffers = {k: v.to(device) for k, v in buffers.items()}
        from .nets import FCN

        if isinstance(models[0], FCN):  # batched matmuls directly: ~1.5x faster than vmap on CPUs
            self.params = [p.requires_grad_() for p in self.params]
            self.step_fn = self._fcn_step
            return
        base = copy.deepcopy(models[0]).to("meta")

        def loss_fn(plist, buffers, x, y):
            logits = functional_call(base, ({n: p for n, p in zip(self.names, plist)}, buffers), (x,))
            loss = per_sample_loss(cfg, logits, y).mean()
            if cfg.l1 > 0:
                loss = loss + cfg.l1 * sum(p.abs().sum() for p in plist)
            return loss, logits

        self.step_fn = vmap(grad_and_value(loss_fn, has_aux=True), in_dims=(0, 0, 0, 0))

    def _fcn_step(self, params, buffers, x, y):
        """(grads, (per-run loss, logits)) of the stacked FCN: bmm through the layers, one
        backward of the summed per-run losses (runs do not interact, so each gets its own grad)."""
        cfg = self.cfg
        k, b = y.shape
        h = x.reshape(k, b, -1)
        for w in params[:-1]:
            h = torch.relu(torch.bmm(h, w.transpose(1, 2)))
        logits = torch.bmm(h, params[-1].transpose(1, 2))
        loss = per_sample_loss(cfg, logits.reshape(k * b, -1), y.reshape(-1)).view(k, b).mean(1)
        if cfg.l1 > 0:
            loss = loss + cfg.l1 * sum(p.abs().flatten(1).sum(1) for p in params)
        grads = torch.autograd.grad(loss.sum(), params)
        return grads, (loss.detach(), logits)

    def keep(self, rows: list[int]) -> None:
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.params[0].device)
        self.params = [p.detach()[idx].requires_grad_(p.requires_grad) for p in self.params]
        if self.bufs is not None:
            self.bufs = [b[idx] for b in self.bufs]
        self.buffers = {k: v[idx] for k, v in self.buffers.items()}

    @torch.no_grad()
    def sgd(self, grads, lr: torch.Tensor) -> None:
        """torch.optim.SGD's update (weight decay, momentum without dampening), per-run LR."""
        cfg = self.cfg
        d = torch._foreach_add(grads, self.params, alpha=cfg.weight_decay) if cfg.weight_decay else grads
        if self.bufs is not None:
            torch._foreach_mul_(self.bufs, cfg.momentum)
            torch._foreach_add_(self.bufs, d)
            d = self.bufs
        for p, g in zip(self.params, d):
            p.sub_(g * lr.view(-1, *([1] * (p.ndim - 1))))

    @torch.no_grad()
    def load_into(self, k: int, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        """Run k's slice of the stack -> its own module and optimizer (for snapshots/checkpoints)."""
        named = dict(model.named_parameters())
        for i, n in enumerate(self.names):
            named[n].copy_(self.params[i][k])
        if self.bufs is not None:
            for i, p in enumerate(model.parameters()):
                opt.state[p]["momentum_buffer"] = self.bufs[i][k].clone()


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
            writers.append(_create_store(path, c, bundle, model, probe_idx, device, lock, placement))
            models.append(model)
        # the data are placed once (on the device, in host memory or mapped), shared by every run's Trainer
        placed = Placed(bundle, placement, device)
        trainers = [Trainer(c, bundle, m, o, w, device, probe_idx, placed=placed)
                    for c, m, o, w in zip(configs, models, opts, writers)]
        return _run(configs, trainers, models, opts, device, progress)
    finally:
        if placed is not None:
            placed.close()
        for lock in locks:
            lock.release()


def _run(configs, trainers, models, opts, device, progress) -> list[RunResult]:
    """Step the stack; each run's `Recorder` records its slice exactly as the sequential loop's
    recorder would (train/recorder.py). A run that ends leaves the stack."""
    cfg0 = configs[0]
    K = len(configs)
    stack = _Stack(models, cfg0, device)
    tr0 = trainers[0]
    X, Y, bs, spe = tr0.X, tr0.Y, tr0.bs, tr0.steps_per_epoch
    active = list(range(K))  # run numbers still training, in stack order
    recs = [Recorder(tr, extra_timings={"batched_runs": K}) for tr in trainers]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg0.max_steps, desc=f"batched x{K}", unit="step", leave=False, dynamic_ncols=True)
    scheduled = cfg0.schedule != "constant" or cfg0.warmup_steps > 0
    lrs = torch.tensor([configs[k].lr for k in active], device=device)
    block_logits, block_norms = [], []
    row_t0, t = 0, 0
    perms = None
    feed = None
    if not tr0.placed.on_device:  # host or mapped data: the stacked batch (runs, batch) gathered a step ahead
        def order(step):
            return torch.stack([trainers[k].order(step) for k in active])

        feed = tr0.placed.feeder(order, cfg0.max_steps)
    try:
        with _StopFlag() as stop, recording_errors(lambda: [recs[k] for k in active], f"batched x{K}"):
            for k in active:
                recs[k].begin(0, reason="training (batched)")
            while active and t < cfg0.max_steps:
                epoch, pos = divmod(t, spe)
                if perms is None or pos == 0:
                    perms = torch.stack([trainers[k].epoch_perm(epoch) for k in active])
                if feed is None:
                    idx = perms[:, pos * bs:(pos + 1) * bs]
                    xb, yb = X[idx], Y[idx]
                else:
                    xb, yb = feed.get(t)
                xb = as_model_input(xb)
                if scheduled:
                    lrs = torch.tensor([configs[k].lr_at(t) for k in active], device=device, dtype=torch.float32)
                grads, (_, logits) = stack.step_fn(stack.params, stack.buffers, xb, yb)
                with torch.no_grad():
                    dims = [tuple(range(1, g.ndim)) for g in grads]
                    gn = [torch.linalg.vector_norm(g, dim=d) for g, d in zip(grads, dims)]
                    pn = [torch.linalg.vector_norm(p, dim=d) for p, d in zip(stack.params, dims)]
                    block_logits.append(logits.detach())
                    block_norms.append(torch.stack(gn + pn))  # (2 * n_params, K)
                stack.sgd(grads, lrs)
                t += 1
                if not is_recording_point(t, cfg0, spe, t - row_t0, stop.signal):
                    continue
                leaving = []
                for j, k in enumerate(active):
                    tr = trainers[k]
                    tr._logits = [lg[j] for lg in block_logits]
                    tr._norms = [nm[:, j] for nm in block_norms]
                    tr.perm_cpu = perms[j].cpu()
                    if recs[k].record(row_t0, t, stop_signal=stop.signal,
                                      sync=lambda j=j, k=k: stack.load_into(j, models[k], opts[k])):
                        leaving.append(j)
                block_logits, block_norms = [], []
                row_t0 = t
                if bar is not None:
                    bar.update(t - bar.n)
                if leaving:
                    keep = [j for j in range(len(active)) if j not in leaving]
                    active = [active[j] for j in keep]
                    stack.keep(keep)
                    perms = perms[keep]
                    lrs = lrs[keep]
                    if feed is not None:  # the next batch was gathered for the old stack
                        feed.invalidate()
                if stop.signal and active:
                    for k in active:
                        err = recs[k].interrupt(stop.signal, f"batched runs stopped at iteration {t} (checkpointed); "
                                                "re-run the sweep to resume them")
                    raise err
    finally:
        if feed is not None:
            feed.invalidate()
        if bar is not None:
            bar.close()
    return [recs[k].result() for k in range(K)]
