"""Input attributions with Captum (Barsbey et al. Figs. 3, 8, 26, 31–36): Integrated Gradients
and DeepLift maps, the share of attribution mass on core / spurious / noise inputs, attribution
entropy, and the share on a background given segmentation masks.

DeepLift needs every nonlinearity to be its own, non-inplace module: torchvision's ResNets reuse
one in-place ``nn.ReLU`` several times per block. :func:`captum_ready` returns a copy of the
model in which every ``nn.ReLU`` is non-inplace and every call site of a reused ReLU module has a
module of its own.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..errors import LrscopeError
from .metrics import _attrs

METHODS = ("integrated_gradients", "deeplift")
SMALL_INPUT = 4096  # inputs with fewer values than this take proportionally larger IG passes


class _Forward(nn.Module):
    """The model's logits as one module (Captum attributes w.r.t. a forward function)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


class _PerCallReLU(nn.Module):
    """Stands in for a ReLU module that a forward pass calls `n` times: call i of each pass goes
    to its own nn.ReLU, so DeepLift's per-module hooks see one use each."""

    def __init__(self, n: int):
        super().__init__()
        self.relus = nn.ModuleList(nn.ReLU() for _ in range(n))
        self.i = 0

    def forward(self, x):
        r = self.relus[self.i]
        self.i = (self.i + 1) % len(self.relus)
        return r(x)


def captum_ready(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of `model` safe for DeepLift: every nn.ReLU non-inplace, and every ReLU module that
    one forward pass of `example` calls more than once replaced by one module per call site."""
    m = copy.deepcopy(model).eval()
    for mod in m.modules():
        if isinstance(mod, nn.ReLU):
            mod.inplace = False
    calls: dict[int, int] = {}

    def count(mod, inp):
        calls[id(mod)] = calls.get(id(mod), 0) + 1

    hooks = [mod.register_forward_pre_hook(count) for mod in m.modules() if isinstance(mod, nn.ReLU)]
    try:
        with torch.no_grad():
            m(example[:1])
    finally:
        for h in hooks:
            h.remove()
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU) and calls.get(id(child), 0) > 1:
                setattr(parent, name, _PerCallReLU(calls[id(child)]))
    return m


def summed_gradients(forward_fn, inputs, target_ind=None, additional_forward_args=None):
    """Captum's ``compute_gradients`` with one backward pass from the sum of the per-sample
    target outputs, instead of from each sample's output as a separate root (``torch.unbind``):
    the same gradients when samples do not interact (a model in eval mode), without autograd's
    per-root cost, which made Integrated Gradients ~5× slower on small networks."""
    from captum._utils.common import _run_forward

    with torch.autograd.set_grad_enabled(True):
        out = _run_forward(forward_fn, inputs, target_ind, additional_forward_args)
        if out.dim() != 1:
            raise LrscopeError("attributions need one scalar output per sample (give a target)")
        return torch.autograd.grad(out.sum(), inputs)


def attributions(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, *,
                 method: str = "integrated_gradients", n_steps: int = 32, batch: int = 256,
                 per_sample_roots: bool = False) -> torch.Tensor:
    """Attribution maps (same shape as `inputs`) for the logit of `target`, baseline all-zero.

    ``method``: ``integrated_gradients`` (Sundararajan et al. 2017, `n_steps` Gauss–Legendre
    steps, Captum's default rule) or ``deeplift`` (Shrikumar et al. 2017, rescale rule). Gradients
    come from one backward pass per batch (:func:`summed_gradients`); ``per_sample_roots`` keeps
    Captum's own gradient function (for checking that they agree)."""
    from captum.attr import DeepLift, IntegratedGradients

    if method not in METHODS:
        raise LrscopeError(f"unknown attribution method {method!r}; valid: {', '.join(METHODS)}")
    net = _Forward(captum_ready(model, inputs)).eval()
    algo = IntegratedGradients(net) if method == "integrated_gradients" else DeepLift(net)
    if not per_sample_roots:
        algo.gradient_func = summed_gradients
    out = []
    # IG runs n_steps × len(xb) scaled inputs in passes of `rows`: `batch` rows of images, more of
    # small inputs (a pass per 256 rows of a 35-feature network is mostly per-pass overhead)
    rows = batch * max(1, SMALL_INPUT // max(1, inputs[0].numel()))
    for xb, tb in zip(inputs.split(batch), target.split(batch)):
        xb = xb.detach().clone().requires_grad_(True)
        kw = {"n_steps": n_steps, "internal_batch_size": rows} if method == "integrated_gradients" else {}
        with warnings.catch_warnings():  # Captum announces its temporary hooks on every call
            warnings.simplefilter("ignore", UserWarning)
            out.append(algo.attribute(xb, target=tb, baselines=torch.zeros_like(xb), **kw).detach())
    return torch.cat(out)


def region_shares(attr: xr.DataArray, regions: xr.DataArray, *, sample_dim: str) -> xr.DataArray:
    """Share of absolute attribution mass on each region (core / spurious / noise), per sample,
    then averaged over samples: Σ_region |a| / Σ_all |a|. Regions need not cover the input;
    `regions` may carry a dim of its own (one share per region, in one pass)."""
    a = np.abs(attr)
    feat = [d for d in attr.dims if d != sample_dim]
    total = a.sum(feat)
    per = (a * regions).sum(feat) / total.where(total > 0)
    return _attrs(per.mean(sample_dim), "share of attribution mass", None)


def attribution_entropy(attr: xr.DataArray, *, sample_dim: str) -> xr.DataArray:
    """Shannon entropy (nats) of the normalised absolute attribution over input features,
    averaged over samples; divided by log(#features) so it lies in [0, 1] (1 = uniform). Samples
    whose attribution is all zero have no distribution and are left out (NaN if all are)."""
    feat = [d for d in attr.dims if d != sample_dim]
    a = np.abs(np.asarray(attr.transpose(sample_dim, *feat).values, dtype=np.float64))
    a = a.reshape(len(a), -1)
    total = a.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = a / total
        h = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(1) / np.log(a.shape[1])
    h = h[total[:, 0] > 0]
    return _attrs(xr.DataArray(h.mean() if len(h) else np.nan), "normalised attribution entropy", None)


def background_share(attr: xr.DataArray, masks: xr.DataArray, *, sample_dim: str) -> xr.DataArray:
    """Share of absolute attribution on the background, given per-sample foreground masks
    (True = object) of the inputs' spatial shape (broadcast over channels)."""
    a = np.abs(attr)
    feat = [d for d in attr.dims if d != sample_dim]
    bg = a.where(~masks.astype(bool), 0.0).sum(feat)
    total = a.sum(feat)
    return _attrs((bg / total.where(total > 0)).mean(sample_dim), "attribution share on background", False)
