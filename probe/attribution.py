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


def attributions(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, *,
                 method: str = "integrated_gradients", n_steps: int = 32, batch: int = 256) -> torch.Tensor:
    """Attribution maps (same shape as `inputs`) for the logit of `target`, baseline all-zero.

    ``method``: ``integrated_gradients`` (Sundararajan et al. 2017, `n_steps` Riemann steps) or
    ``deeplift`` (Shrikumar et al. 2017, rescale rule)."""
    from captum.attr import DeepLift, IntegratedGradients

    if method not in METHODS:
        raise LrscopeError(f"unknown attribution method {method!r}; valid: {', '.join(METHODS)}")
    net = _Forward(captum_ready(model, inputs)).eval()
    algo = IntegratedGradients(net) if method == "integrated_gradients" else DeepLift(net)
    out = []
    for xb, tb in zip(inputs.split(batch), target.split(batch)):
        xb = xb.detach().clone().requires_grad_(True)
        kw = {"n_steps": n_steps, "internal_batch_size": batch} if method == "integrated_gradients" else {}
        with warnings.catch_warnings():  # Captum announces its temporary hooks on every call
            warnings.simplefilter("ignore", UserWarning)
            out.append(algo.attribute(xb, target=tb, baselines=torch.zeros_like(xb), **kw).detach())
    return torch.cat(out)


def region_shares(attr: xr.DataArray, regions: xr.DataArray, *, sample_dim: str) -> xr.DataArray:
    """Share of absolute attribution mass on each region (core / spurious / noise), per sample,
    then averaged over samples: Σ_region |a| / Σ_all |a|. Regions need not cover the input."""
    a = np.abs(attr)
    feat = [d for d in attr.dims if d != sample_dim]
    total = a.sum(feat)
    per = (a * regions).sum(feat) / total.where(total > 0)
    return _attrs(per.mean(sample_dim), "share of attribution mass", None)


def attribution_entropy(attr: xr.DataArray, *, sample_dim: str) -> xr.DataArray:
    """Shannon entropy (nats) of the normalised absolute attribution over input features,
    averaged over samples; divided by log(#features) so it lies in [0, 1] (1 = uniform)."""
    feat = [d for d in attr.dims if d != sample_dim]
    a = np.abs(attr).stack(_feature=feat)
    p = a / a.sum("_feature").where(a.sum("_feature") > 0)
    h = -(xr.where(p > 0, p * np.log(p.where(p > 0)), 0.0)).sum("_feature")
    return _attrs((h / np.log(a.sizes["_feature"])).where(a.sum("_feature") > 0).mean(sample_dim),
                  "normalised attribution entropy", None)


def background_share(attr: xr.DataArray, masks: xr.DataArray, *, sample_dim: str) -> xr.DataArray:
    """Share of absolute attribution on the background, given per-sample foreground masks
    (True = object) of the inputs' spatial shape (broadcast over channels)."""
    a = np.abs(attr)
    feat = [d for d in attr.dims if d != sample_dim]
    bg = a.where(~masks.astype(bool), 0.0).sum(feat)
    total = a.sum(feat)
    return _attrs((bg / total.where(total > 0)).mean(sample_dim), "attribution share on background", False)
