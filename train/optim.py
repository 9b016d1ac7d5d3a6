"""Optimizers, SAM's ascent step and the training losses: the step's mathematics, apart from the
loop that runs it (train/loop.py, train/batched.py) and the recorder that logs it (train/recorder.py).

The per-sample loss is defined once, on the device (`per_sample_loss`, autograd) and on the host
(`per_sample_loss_np`, float64, from the logged logits); the step's loss is their mean, with the
mean cross-entropy taken through `F.cross_entropy` directly (the same number, one fused kernel).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .config import RunConfig


def training_loss(cfg: RunConfig, logits: torch.Tensor, y: torch.Tensor, params=()) -> torch.Tensor:
    """The minibatch objective: mean CE or focal loss, plus the L1 penalty over `params`."""
    if cfg.loss == "ce":
        loss = F.cross_entropy(logits, y)
    else:
        loss = per_sample_loss(cfg, logits, y).mean()
    if cfg.l1 > 0:
        loss = loss + cfg.l1 * sum(p.abs().sum() for p in params)
    return loss


def mean_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Mean CE of a whole split (the train-loss stop criterion)."""
    return F.cross_entropy(logits.float(), y).item()


def per_sample_loss(cfg: RunConfig, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    ce = F.cross_entropy(logits, y, reduction="none")
    if cfg.loss == "focal":  # Lin et al. 2017: (1 - p_t)^gamma * CE
        pt = torch.exp(-ce)
        return (1 - pt).pow(cfg.focal_gamma) * ce
    return ce


def make_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:
    """The optimizer; SAM/ASAM use SGD (momentum, weight decay) as their base step, the ascent
    step is taken by the loop (`sam_perturb`)."""
    if cfg.optimizer in ("sgd", "sam", "asam"):
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def optimizer_arrays(opt: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    out = {}
    for i, st in opt.state_dict()["state"].items():
        for key, v in st.items():
            if torch.is_tensor(v):
                out[f"{i}.{key}"] = v.detach().cpu().numpy().copy()
            else:
                out[f"{i}.{key}"] = np.asarray(v)
    return out


def load_optimizer(opt: torch.optim.Optimizer, arrays: dict[str, np.ndarray], device) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, arr in arrays.items():
        i, key = name.split(".", 1)
        t = torch.from_numpy(np.array(arr))
        state.setdefault(int(i), {})[key] = t if key == "step" else t.to(device)
    sd["state"] = state
    opt.load_state_dict(sd)


@torch.no_grad()
def sam_perturb(params: list[torch.Tensor], rho: float, adaptive: bool) -> tuple[list, list]:
    """SAM's ascent step (Foret et al. 2021), ASAM's scale-invariant one when `adaptive` (Kwon et al.
    2021, as in davda54/sam): w += rho * T^2 g / ||T g|| with T = |w| (ASAM) or 1 (SAM).
    Returns the perturbed tensors and their perturbations, to be subtracted after the second gradient."""
    ps = [p for p in params if p.grad is not None]
    grads = [p.grad for p in ps]
    t = torch._foreach_abs(ps) if adaptive else None
    scaled = torch._foreach_mul(grads, t) if adaptive else grads
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(scaled)))
    scale = rho / (norm + 1e-12)
    e = torch._foreach_mul(torch._foreach_mul(scaled, t) if adaptive else grads, scale)
    torch._foreach_add_(ps, e)
    return ps, e


def per_sample_loss_np(cfg: RunConfig, logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The training loss of each sample, recomputed on the host from its logits (float64)."""
    z = logits.astype(np.float64)
    m = z.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[..., 0]
    ce = lse - np.take_along_axis(z, y[..., None], -1)[..., 0]
    if cfg.loss == "focal":
        ce = (1 - np.exp(-ce)) ** cfg.focal_gamma * ce
    return ce
