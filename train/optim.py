"""Optimizers, SAM's ascent step and the training losses: the step's mathematics, apart from the
step that takes it (train/step.py, for one run and for stacked runs) and the recorder that logs
it (train/recorder.py).

The per-sample loss is defined once, on the device (`per_sample_loss`, autograd) and on the host
(`per_sample_loss_np`, float64, from the logged logits); the step's loss is their mean, with the
mean cross-entropy taken through `F.cross_entropy` directly (the same number, one fused kernel).
"""

from __future__ import annotations

import warnings

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


def stacked_training_loss(cfg: RunConfig, logits: torch.Tensor, y: torch.Tensor, params=()) -> torch.Tensor:
    """The objective of stacked runs (train/step.py), one per run: `logits` (runs..., batch,
    classes), `y` (runs..., batch), `params` each with the same leading run dimensions. The
    mean per-sample loss (CE or focal), plus the L1 penalty of each run's weights."""
    loss = per_sample_loss(cfg, logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).view(y.shape).mean(-1)
    if cfg.l1 > 0:
        lead = y.ndim - 1
        loss = loss + cfg.l1 * sum(p.abs().flatten(lead).sum(-1) for p in params)
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
    step is taken by the loop (`sam_perturb`). kron: heavyball's PSGDKron (Li's PSGD with a
    Kronecker-factored preconditioner), run eagerly (no torch.compile: CPU-friendly, and the same
    kernels on every run), with its default preconditioner-update schedule (a deterministic
    cumulative-probability counter kept in the param group) and `kron_*` knobs."""
    if cfg.optimizer == "kron":
        import heavyball
        import heavyball.utils

        heavyball.utils.compile_mode = None  # eager: no inductor build on CPU, no compile per shape
        # the loop sets the LR of every step (cfg.lr_at); heavyball supports that with multi_tensor=True
        # (its default, used here) and warns once that it is "experimental"
        warnings.filterwarnings("ignore", message="Learning rate changed between steps", module="heavyball")
        return heavyball.PSGDKron(params, lr=cfg.lr, betas=(cfg.kron_beta, 0.999), weight_decay=cfg.weight_decay,
                                  precond_lr=cfg.kron_precond_lr, max_size_triangular=cfg.kron_max_size_triangular,
                                  compile_step=False)
    if cfg.optimizer in ("sgd", "sam", "asam"):
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@torch.no_grad()
def stacked_sgd_(params: list[torch.Tensor], grads, bufs: list[torch.Tensor] | None, lrs: torch.Tensor, *,
                 momentum: float, weight_decay: float) -> None:
    """torch.optim.SGD's update (weight decay, momentum without dampening) of stacked runs
    (train/step.py), in place: `params`, `grads` and the momentum buffers `bufs` (zeros at first;
    None without momentum) stacked along a leading run dimension, each run its own LR (`lrs`)."""
    d = torch._foreach_add(grads, params, alpha=weight_decay) if weight_decay else grads
    if bufs is not None:
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, d)
        d = bufs
    for p, g in zip(params, d):
        p.sub_(g * lrs.view(-1, *([1] * (p.ndim - 1))))


# Optimizers whose step draws from torch's global RNG (PSGD's random probe vectors): the loop
# reseeds it from (seed, iteration) before each step, so a resumed run draws what an uninterrupted
# one would.
RANDOM_OPTIMIZERS = ("kron",)

TREE_KEY = "tree"  # heavyball's nested state: its structure as JSON (uint8), tensors as arrays a<n>


def optimizer_arrays(opt: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    """The optimizer's state as named arrays, for checkpoints/optimizer/<slot>/ (no pickle).
    torch's optimizers: `<param index>.<key>` per state tensor (0-d ones included). heavyball's
    (kron): its nested per-parameter state, the changing entries of its param groups (step
    counters, the preconditioner-update accumulator) and of its own attributes, as one JSON tree
    whose tensor leaves point at arrays `a<n>` (`_encode_tree`)."""
    if _is_heavyball(opt):
        return _heavyball_arrays(opt)
    out = {}
    for i, st in opt.state_dict()["state"].items():
        for key, v in st.items():
            if torch.is_tensor(v):
                out[f"{i}.{key}"] = v.detach().cpu().numpy().copy()
            else:
                out[f"{i}.{key}"] = np.asarray(v)
    return out


def load_optimizer(opt: torch.optim.Optimizer, arrays: dict[str, np.ndarray], device) -> None:
    if TREE_KEY in arrays:
        if not _is_heavyball(opt):
            raise ValueError("the checkpoint holds heavyball optimizer state, the run's optimizer is not heavyball's")
        return _load_heavyball(opt, arrays, device)
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, arr in arrays.items():
        i, key = name.split(".", 1)
        t = torch.from_numpy(np.array(arr))
        state.setdefault(int(i), {})[key] = t if key == "step" else t.to(device)
    sd["state"] = state
    opt.load_state_dict(sd)


def _is_heavyball(opt) -> bool:
    return type(opt).__module__.split(".")[0] == "heavyball"


# heavyball keeps in its param groups both the configuration (restored by make_optimizer) and
# counters that change as it steps; the latter are saved. Its own attributes: only the ones that
# can change while training (the pickled schedule of its state_dict is rebuilt from the config).
_HB_ATTRS = ("_fallback_enabled",)


def _heavyball_arrays(opt) -> dict[str, np.ndarray]:
    import json

    index = {id(p): i for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}
    state = {index[id(p)]: st for p, st in opt.state.items() if id(p) in index}
    groups = [{k: v for k, v in g.items() if k != "params" and not k.startswith("_")} for g in opt.param_groups]
    attrs = {k: getattr(opt, k) for k in _HB_ATTRS if hasattr(opt, k)}
    arrays: list[np.ndarray] = []
    tree = _encode_tree({"state": state, "groups": groups, "attrs": attrs}, arrays)
    out = {f"a{n}": a for n, a in enumerate(arrays)}
    out[TREE_KEY] = np.frombuffer(json.dumps(tree, allow_nan=True).encode(), dtype=np.uint8).copy()
    return out


def _load_heavyball(opt, arrays: dict[str, np.ndarray], device) -> None:
    """Put the saved state back as it was (dtypes included: heavyball keeps float64 running
    bounds beside float32 parameters, which torch's load_state_dict would cast)."""
    import json

    tree = _decode_tree(json.loads(bytes(np.asarray(arrays[TREE_KEY], dtype=np.uint8)).decode()), arrays, device)
    params = [p for g in opt.param_groups for p in g["params"]]
    opt.state.clear()
    for i, st in tree["state"].items():
        opt.state[params[int(i)]] = st
    if len(tree["groups"]) != len(opt.param_groups):
        raise ValueError("the checkpoint's optimizer has a different number of parameter groups")
    for g, saved in zip(opt.param_groups, tree["groups"]):
        g.update(saved)
    for k, v in tree["attrs"].items():
        setattr(opt, k, v)


def _encode_tree(x, arrays: list):
    """A nested optimizer state as JSON: tensors become {"T": n} (array n, appended to `arrays`),
    numpy scalars and arrays likewise ({"N": n}); dicts keep their key types, lists, tuples and
    sets their kind; ints, floats (exact: JSON keeps a float's repr), bools, strings and None stay."""
    if torch.is_tensor(x):
        arrays.append(x.detach().cpu().numpy().copy())
        return {"T": len(arrays) - 1}
    if isinstance(x, np.ndarray | np.generic):
        arrays.append(np.asarray(x).copy())
        return {"N": len(arrays) - 1}
    if isinstance(x, dict):
        return {"D": [[_encode_tree(k, arrays), _encode_tree(v, arrays)] for k, v in x.items()]}
    if isinstance(x, list | tuple | set | frozenset):
        kind = "U" if isinstance(x, tuple) else "S" if isinstance(x, set | frozenset) else "L"
        items = sorted(x, key=repr) if kind == "S" else x
        return {kind: [_encode_tree(v, arrays) for v in items]}
    if isinstance(x, torch.dtype):
        return {"dtype": str(x).removeprefix("torch.")}
    if x is None or isinstance(x, bool | int | float | str):
        return x
    raise TypeError(f"cannot store optimizer state of type {type(x).__name__} without pickle")


def _decode_tree(x, arrays: dict[str, np.ndarray], device):
    if isinstance(x, dict):
        (kind, v), = x.items()
        if kind == "T":
            return torch.from_numpy(np.array(arrays[f"a{v}"])).to(device)
        if kind == "N":
            return np.array(arrays[f"a{v}"])
        if kind == "D":
            return {_decode_tree(k, arrays, device): _decode_tree(val, arrays, device) for k, val in v}
        if kind == "dtype":
            return getattr(torch, v)
        items = [_decode_tree(i, arrays, device) for i in v]
        return {"L": list, "U": tuple, "S": set}[kind](items)
    return x


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
