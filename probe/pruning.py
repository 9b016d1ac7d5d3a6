"""Pruning curves and κ-prunability (Barsbey et al. §3.2, supplement Figs. 21–22).

Pruning is done with masks on a copy of the weights, one κ at a time, never by rebuilding
the network: a structured mask zeroes whole output units (rows of a Linear weight, filters of a
Conv weight), and a forward hook zeroes the unit's output — after the BatchNorm that follows a
conv when there is one (its shift would otherwise revive the channel), so a pruned unit outputs
exactly zero downstream.

lrscope's FCN (Linear/ReLU pairs and a linear head) takes a shortcut for the structured and
column kinds: the pruned network is evaluated with the kept rows and columns sliced out of the
weights, which computes the same logits with the zeros left out (a pruned unit's output, or a
pruned column's input, contributes exactly nothing either way) at a fraction of the FLOPs.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..errors import LrscopeError
from .metrics import _attrs, _input, _plain_names, _renamed, _resolve

KAPPAS = tuple(round(0.1 * i, 1) for i in range(10))
KINDS = ("structured", "magnitude", "column")


def _prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Linear and Conv layers except the output head (kept, per the paper)."""
    head = getattr(model, "head", None)
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d)) and m is not head]


def _output_module(model: nn.Module) -> dict[str, nn.Module]:
    """For each prunable layer, the module whose output carries its channels: the BatchNorm that
    directly follows a conv (same channel count), else the layer itself."""
    mods = list(model.named_modules())
    out = {}
    for i, (name, m) in enumerate(mods):
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nxt = mods[i + 1][1] if i + 1 < len(mods) else None
            if isinstance(m, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d) and nxt.num_features == m.out_channels:
                out[name] = nxt
            else:
                out[name] = m
    return out


def _unit_norms(w: torch.Tensor) -> torch.Tensor:
    return w.detach().flatten(1).norm(dim=1)


def _column_norms(w: torch.Tensor) -> torch.Tensor:
    return w.detach().transpose(0, 1).flatten(1).norm(dim=1)


def _kept(norms: torch.Tensor, kappa: float) -> torch.Tensor:
    """Boolean mask keeping all but the ⌊κ·n⌋ entries of lowest norm."""
    k = int(math.floor(kappa * len(norms)))
    keep = torch.ones(len(norms), dtype=torch.bool, device=norms.device)
    if k > 0:
        keep[norms.argsort()[:k]] = False
    return keep


@torch.inference_mode()
def _accuracy(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
              batch: int = 4096) -> float:
    from ..train.data import as_model_input

    correct = 0
    for xb, yb in zip(x.split(batch), y.split(batch)):
        correct += (model(as_model_input(xb)).argmax(1) == yb).sum().item()
    return correct / len(y)


def _apply_masks(model: nn.Module, kind: str, kappa: float, originals: dict[str, torch.Tensor]):
    """Set the prunable weights to their masked originals for this κ; returns hook handles."""
    layers = _prunable_layers(model)
    hooks = []
    if kind == "magnitude":  # global unstructured: the κ smallest |w| over all prunable layers
        allw = torch.cat([originals[n].abs().flatten() for n, _ in layers])
        k = int(math.floor(kappa * allw.numel()))
        thr = allw.kthvalue(k).values if k > 0 else None
        for n, m in layers:
            w = originals[n]
            m.weight.copy_(w if thr is None else torch.where(w.abs() <= thr, torch.zeros_like(w), w))
        return hooks
    outputs = _output_module(model)
    for n, m in layers:
        w = originals[n]
        if kind == "structured":
            keep = _kept(_unit_norms(w), kappa)
            shape = (-1,) + (1,) * (w.dim() - 1)
            m.weight.copy_(w * keep.view(shape).to(w.dtype))
            if outputs[n] is m and getattr(m, "bias", None) is None:
                continue  # a zeroed unit of a bias-free layer already outputs exactly zero
            ch_mask = keep.to(w.dtype)

            def hook(mod, inp, out, mask=ch_mask):
                view = (1, -1) + (1,) * (out.dim() - 2)
                return out * mask.view(view)

            hooks.append(outputs[n].register_forward_hook(hook))
        else:  # column: the κ input columns with the smallest norm, per layer
            keep = _kept(_column_norms(w), kappa)
            shape = (1, -1) + (1,) * (w.dim() - 2)
            m.weight.copy_(w * keep.view(shape).to(w.dtype))
    return hooks


def _is_relu_chain(model: nn.Module) -> bool:
    """True for lrscope's FCN built of Flatten, then Linear/ReLU pairs, then the linear head: its
    prunable layers, in order, are then the chain of hidden layers."""
    from ..train.models import FCN

    if type(model) is not FCN:
        return False
    mods = list(model.features)
    if isinstance(mods[0], nn.Flatten):
        mods = mods[1:]
    lin, act = mods[0::2], mods[1::2]
    return len(lin) == len(act) and all(type(m) is nn.Linear for m in lin) and \
        all(type(a) is nn.ReLU for a in act)


def _sliced_forward(model: nn.Module, layers: list[tuple[str, nn.Module]], kind: str, kappa: float,
                    originals: dict[str, torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The logits of the FCN pruned by `kind` ("structured" or "column") at κ, computed on the kept
    rows and columns only. Structured: layer l computes its kept units from the previous layer's
    kept units. Column: layer l reads its kept input columns, so the layer before need compute
    only those units (the last hidden layer computes all: the head is not pruned)."""
    ws = [originals[n] for n, _ in layers]
    if kind == "structured":
        rows = [_kept(_unit_norms(w), kappa).nonzero().squeeze(1) for w in ws]
        cols = [None] + rows[:-1]
    else:
        cols = [_kept(_column_norms(w), kappa).nonzero().squeeze(1) for w in ws]
        rows = cols[1:] + [None]
    sliced = []
    for (_, m), w, r, c in zip(layers, ws, rows, cols):
        w = w if r is None else w[r]
        sliced.append((w if c is None else w[:, c], m.bias if m.bias is None or r is None else m.bias[r]))
    head_w = model.head.weight if rows[-1] is None else model.head.weight[:, rows[-1]]

    def forward(x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        if cols[0] is not None:
            h = h[:, cols[0]]
        for w, b in sliced:
            h = torch.relu(nn.functional.linear(h, w, b))
        return nn.functional.linear(h, head_w, model.head.bias)

    return forward


def pruning_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, kind: str = "structured",
                  kappas=KAPPAS, unpruned: float | None = None, sliced: bool = True) -> xr.DataArray:
    """Accuracy of the pruned network for each κ (fraction of units / weights / columns removed).

    ``kind``: ``structured`` (lowest-L2 neurons of each Linear layer and filters of each Conv
    layer, output layer kept), ``magnitude`` (global unstructured, smallest |w|), ``column``
    (lowest-norm input columns of each layer). The model is restored afterwards. ``unpruned``:
    the model's accuracy on (x, y) when already known (κ = 0 prunes nothing, whatever the kind).
    ``sliced``: evaluate lrscope's FCN on its kept rows and columns (structured and column kinds;
    the same accuracies as masking, with fewer FLOPs); False always masks.
    """
    if kind not in KINDS:
        raise LrscopeError(f"unknown pruning kind {kind!r}; valid: {', '.join(KINDS)}")
    kappas = [float(k) for k in kappas]
    if any(not 0 <= k <= 1 for k in kappas):
        raise LrscopeError(f"kappa values must be in [0, 1], got {kappas}")
    layers = _prunable_layers(model)
    if not layers:
        raise LrscopeError("model has no prunable Linear/Conv layers besides its head")
    originals = {n: m.weight.detach().clone() for n, m in layers}
    chain = sliced and _is_relu_chain(model)
    accs = []
    model.eval()
    try:
        with torch.no_grad():
            for kappa in kappas:
                if kappa == 0 and unpruned is not None:
                    accs.append(float(unpruned))
                    continue
                if chain and kind != "magnitude":
                    accs.append(_accuracy(_sliced_forward(model, layers, kind, kappa, originals), x, y))
                    continue
                hooks = _apply_masks(model, kind, kappa, originals)
                try:
                    accs.append(_accuracy(model, x, y))
                finally:
                    for h in hooks:
                        h.remove()
    finally:
        with torch.no_grad():
            for n, m in layers:
                m.weight.copy_(originals[n])
    da = xr.DataArray(np.array(accs, dtype=np.float64), dims=["kappa"], coords={"kappa": kappas})
    return _attrs(da, f"accuracy after {kind} pruning", True, kind=kind)


# a pruning curve's attrs (kind, evaluated_on) stay on the measures made from it
def _kappa_curve(fn: str, curve, kappa_dim, dim) -> tuple[xr.DataArray, str]:
    given = {"kappa": _renamed(fn, dim, kappa_dim, "kappa_dim")}
    curve = _input(curve, fn, _plain_names(given))
    return curve, _resolve(fn, curve, given)["kappa"]


def prunability_np(acc, kappas=None) -> np.ndarray:
    """Numpy core of :func:`prunability`: accuracies (..., kappa) at `kappas` (the unpruned one
    is at κ = 0 when `kappas` has it, else first)."""
    acc = np.asarray(acc)
    at0 = np.flatnonzero(np.asarray(kappas) == 0.0) if kappas is not None else []
    base = acc[..., at0[0] if len(at0) else 0]
    ratio = np.clip(acc / np.where(base > 0, base, np.nan)[..., None], 0, 1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        return np.nanmean(ratio, -1)


def prunability(curve, *, kappa_dim: str | None = None, dim: str | None = None) -> xr.DataArray:
    """κ-prunability: the mean over κ of the retention ratio Acc(f^κ)/Acc(f), clipped to [0, 1]
    (Barsbey et al. Table 1 scale). NaN when the unpruned accuracy is 0. `kappa_dim` (``dim``:
    its deprecated name) is ``kappa`` when unambiguous.

    Examples
    --------
    >>> curve = xr.DataArray([0.99, 0.60], dims=["kappa"], coords={"kappa": [0.0, 0.5]})
    >>> round(float(prunability(curve)), 4)   # (1 + 0.60 / 0.99) / 2
    0.803
    """
    curve, k = _kappa_curve("prunability", curve, kappa_dim, dim)
    kappas = curve[k].values if k in curve.coords else None
    p = xr.apply_ufunc(prunability_np, curve, input_core_dims=[[k]], kwargs={"kappas": kappas}, keep_attrs=True)
    return _attrs(p, "κ-prunability (mean accuracy retention)", True)


def pruned_accuracy_np(acc) -> np.ndarray:
    """Numpy core of :func:`pruned_accuracy`: accuracies (..., kappa)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        return np.nanmean(np.asarray(acc), -1)


def pruned_accuracy(curve, *, kappa_dim: str | None = None, dim: str | None = None) -> xr.DataArray:
    """Mean pruned accuracy: the mean over κ of Acc(f^κ) itself, not divided by Acc(f).

    The paper defines prunability as the retention ratio (:func:`prunability`), but its parity row
    of Table 1 (0.56 at LR 0.01, where the unpruned accuracy is 55.3 %) cannot be a mean retention
    ratio on a balanced binary test set: that would need pruned accuracies near 31 %, far below
    chance. It is where the mean pruned accuracy lands (our parity sweeps: 0.56 → 0.77 on the demo,
    0.62 → 0.76 on the replication sweep, against the paper's 0.56 → 0.78). Reported next to the
    ratio so the two readings can be compared; on models near chance they disagree in direction.

    Examples
    --------
    >>> curve = xr.DataArray([0.99, 0.60], dims=["kappa"], coords={"kappa": [0.0, 0.5]})
    >>> round(float(pruned_accuracy(curve)), 4)
    0.795
    """
    curve, k = _kappa_curve("pruned_accuracy", curve, kappa_dim, dim)
    return _attrs(xr.apply_ufunc(pruned_accuracy_np, curve, input_core_dims=[[k]], keep_attrs=True),
                  "mean pruned accuracy (over κ)", True)
