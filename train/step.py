"""One training step: the forward pass, the loss, the optimizer update, the gradient and weight
norms the recorder logs, and the step's learning rate from the schedule. One place for both
built-in steppers: `Step` takes it for one run (the sequential loop, `Trainer` in train/loop.py),
`StackedStep` for K runs that differ only in learning rate and seed, stacked into one set of
weights (the batched loop, train/batched.py).

The mathematics lives beside it: the losses and optimizers in train/optim.py (`training_loss`,
`stacked_training_loss`, `make_optimizer`, `stacked_sgd_`), the schedule in `RunConfig.lr_at`, a
model's forward in the model (train/nets.py; a model with a `stacked_forward` runs K copies of
itself as batched matmuls, any other batchable model through ``torch.func.functional_call`` under
``vmap``). A step keeps no copies and makes no host syncs: it returns references to the
minibatch logits and one tensor of norms, which the run's `Trainer` keeps for its `Recorder`.
"""

from __future__ import annotations

import copy

import torch

from .config import RunConfig
from .optim import sam_perturb, stacked_sgd_, stacked_training_loss, training_loss


def is_scheduled(cfg: RunConfig) -> bool:
    """Whether the LR changes from step to step (a schedule or a warm-up): the step then sets it."""
    return cfg.schedule != "constant" or cfg.warmup_steps > 0


class Step:
    """One optimizer step of one run: its model `model` and optimizer `opt`, forward passes in
    `amp()` (bf16 autocast or a no-op), inputs in channels-last memory format when asked for, the
    global RNG reseeded from (seed, iteration) when the model or optimizer draws from it
    (`stochastic`), SAM/ASAM's ascent step when the config's optimizer is one of them."""

    stacked = False

    def __init__(self, cfg: RunConfig, model: torch.nn.Module, opt: torch.optim.Optimizer, *, amp,
                 channels_last: bool = False, stochastic: bool = False):
        self.cfg, self.model, self.opt, self.amp = cfg, model, opt, amp
        self.channels_last, self.stochastic = channels_last, stochastic
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.scheduled = is_scheduled(cfg)
        self.sam = cfg.optimizer in ("sam", "asam")

    def objective(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Minibatch logits (float32) and the training loss (CE or focal, + L1 penalty)."""
        cfg = self.cfg
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.amp():
            logits = self.model(x)
        logits = logits.float()
        return logits, training_loss(cfg, logits, y, self.params if cfg.l1 > 0 else ())

    def __call__(self, t: int, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step t on the minibatch (`xb` model inputs, `yb` labels, on the device). Returns its
        logits (detached) and the norms of each gradient, then of each weight tensor (the weights
        the logits came from), stacked: one tensor a step (holding 16 0-d tensors a step cost a
        parity FCN step ~30-60 µs, most of it the garbage collector walking them;
        benchmarks/RESULTS.md)."""
        cfg, opt = self.cfg, self.opt
        if self.stochastic:
            torch.manual_seed((cfg.seed * 1_000_003 + t) % 2**63)
        if self.scheduled:
            lr_t = cfg.lr_at(t)
            for g in opt.param_groups:
                g["lr"] = lr_t
        logits, loss = self.objective(xb, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            norms = torch.stack(torch._foreach_norm([p.grad for p in self.params if p.grad is not None]
                                                    + self.params))
        if self.sam:  # second gradient at the perturbed weights, then back to w for the step
            ps, e = sam_perturb(self.params, cfg.sam_rho, cfg.optimizer == "asam")
            opt.zero_grad(set_to_none=True)
            self.objective(xb, yb)[1].backward()
            with torch.no_grad():
                torch._foreach_sub_(ps, e)
        opt.step()
        return logits.detach(), norms


class StackedStep:
    """The step of K runs at once, their weights stacked along a leading run dimension: the same
    forward, loss, SGD update (momentum, weight decay; each run its own LR), norms and schedule as
    `Step` takes for each run alone, for models without BatchNorm in plain fp32 SGD (what
    `batch_key` admits). `keep(rows)` drops the runs that ended; `load_into` copies a run's
    slice into its own module and optimizer for its snapshots and checkpoints."""

    stacked = True

    def __init__(self, models: list[torch.nn.Module], configs: list[RunConfig], device):
        from torch.func import functional_call, grad_and_value, stack_module_state, vmap

        self.cfg = cfg = configs[0]
        self.configs = list(configs)
        params, buffers = stack_module_state(models)
        self.names = list(params)
        self.params = [params[n].detach().to(device) for n in self.names]
        self.bufs = [torch.zeros_like(p) for p in self.params] if cfg.momentum > 0 else None
        self.buffers = {k: v.to(device) for k, v in buffers.items()}
        self.device = device
        self.scheduled = is_scheduled(cfg)
        self.lrs = torch.tensor([c.lr for c in self.configs], device=device)
        forward = getattr(models[0], "stacked_forward", None)
        if forward is not None:  # the model runs its K copies itself (FCN: batched matmuls, ~1.5x vmap on CPUs)
            self.params = [p.requires_grad_() for p in self.params]
            self._forward = forward
            self.grads_fn = self._stacked_grads
            return
        base = copy.deepcopy(models[0]).to("meta")

        def loss_fn(plist, buffers, x, y):
            logits = functional_call(base, ({n: p for n, p in zip(self.names, plist)}, buffers), (x,))
            return stacked_training_loss(cfg, logits, y, plist), logits

        self.grads_fn = vmap(grad_and_value(loss_fn, has_aux=True), in_dims=(0, 0, 0, 0))

    def _stacked_grads(self, params, buffers, x, y):
        """(grads, (per-run loss, logits)) through the model's `stacked_forward`: one backward of
        the summed per-run losses (runs do not interact, so each gets its own gradient)."""
        logits = self._forward(params, x)
        loss = stacked_training_loss(self.cfg, logits, y, params)
        grads = torch.autograd.grad(loss.sum(), params)
        return grads, (loss.detach(), logits)

    def __call__(self, t: int, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step t of every run: `xb` (runs, batch, ...) model inputs, `yb` (runs, batch) labels.
        Returns the logits (runs, batch, classes) and the norms (2 x tensors, runs): each
        gradient's, then each weight tensor's, per run."""
        if self.scheduled:
            self.lrs = torch.tensor([c.lr_at(t) for c in self.configs], device=self.device, dtype=torch.float32)
        grads, (_, logits) = self.grads_fn(self.params, self.buffers, xb, yb)
        with torch.no_grad():
            dims = [tuple(range(1, g.ndim)) for g in grads]
            gn = [torch.linalg.vector_norm(g, dim=d) for g, d in zip(grads, dims)]
            pn = [torch.linalg.vector_norm(p, dim=d) for p, d in zip(self.params, dims)]
            norms = torch.stack(gn + pn)
        stacked_sgd_(self.params, grads, self.bufs, self.lrs, momentum=self.cfg.momentum,
                     weight_decay=self.cfg.weight_decay)
        return logits.detach(), norms

    def keep(self, rows: list[int]) -> None:
        """Keep only the runs at positions `rows` of the stack."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.params[0].device)
        self.params = [p.detach()[idx].requires_grad_(p.requires_grad) for p in self.params]
        if self.bufs is not None:
            self.bufs = [b[idx] for b in self.bufs]
        self.buffers = {k: v[idx] for k, v in self.buffers.items()}
        self.configs = [self.configs[j] for j in rows]
        self.lrs = self.lrs[rows]

    @torch.no_grad()
    def load_into(self, k: int, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        """Run k's slice of the stack -> its own module and optimizer (for snapshots/checkpoints)."""
        named = dict(model.named_parameters())
        for i, n in enumerate(self.names):
            named[n].copy_(self.params[i][k])
        if self.bufs is not None:
            for i, p in enumerate(model.parameters()):
                opt.state[p]["momentum_buffer"] = self.bufs[i][k].clone()
