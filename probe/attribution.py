"""Input attributions with Captum (Barsbey et al. Figs. 3, 8, 26, 31–36): Integrated Gradients
and DeepLift maps, the share of attribution mass on core / spurious / noise inputs, attribution
entropy, and the share on a background given segmentation masks.

DeepLift needs every nonlinearity to be its own, non-inplace module: torchvision's ResNets reuse
one in-place ``nn.ReLU`` several times per block. :func:`captum_ready` returns a copy of the
model in which every ``nn.ReLU`` is non-inplace and every call site of a reused ReLU module has a
module of its own.

The maps follow the metrics' contract (:mod:`lrscope.probe.metrics`): :func:`attributions_torch`
is the core (tensors on the model's device), :func:`attributions` the labelled wrapper (a
DataArray over the sample dim and the input dims). The cores of the measures on maps take
(sample, *input) arrays; their wrappers take every dim but the sample dim as an input dim.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..errors import LrscopeError
from .metrics import SAMPLE, MetricError, annotate, resolve_dims

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


def attributions_torch(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, *,
                       method: str = "integrated_gradients", n_steps: int = 32, batch: int = 256,
                       per_sample_roots: bool = False, exact: bool = True) -> torch.Tensor:
    """The core of :func:`attributions`: the maps as a tensor of the shape of `inputs`, on its device."""
    if method not in METHODS:
        raise LrscopeError(f"unknown attribution method {method!r}; valid: {', '.join(METHODS)}")
    if exact and positively_homogeneous(model):
        return _gradient_x_input(model, inputs, target, batch)
    from captum.attr import DeepLift, IntegratedGradients  # ~2 s to import: only where it is used
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


def positively_homogeneous(model: nn.Module) -> bool:
    """True for a network with f(a·x) = a·f(x) for every a > 0: lrscope's bias-free FCN and VGG-like
    CNN (Linear/Conv layers without biases, ReLU, max and average pooling, Flatten). Its gradient is
    then the same at every point a·x of the straight path from the zero baseline, so Integrated
    Gradients from that baseline is exactly x ⊙ ∇f(x), whatever the number of steps; and every
    unit's reference activation is 0, so DeepLift's rescale multipliers (ReLU: out/in; max pool:
    the winner's) are the gradient's and DeepLift is x ⊙ ∇f(x) too (checked against Captum: equal
    to 1e-7 relative on the Colored MNIST CNN, tests/test_pruning_probe.py)."""
    from .pruning import layer_chain

    chain = layer_chain(model)
    return chain is not None and all(getattr(m, "bias", None) is None for m in chain
                                     if isinstance(m, (nn.Linear, nn.Conv2d)))


def _gradient_x_input(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, batch: int) -> torch.Tensor:
    model = model.eval()
    out = []
    for xb, tb in zip(inputs.split(batch), target.split(batch)):
        xb = xb.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(model(xb).gather(1, tb.view(-1, 1)).sum(), xb)
        out.append((xb * g).detach())
    return torch.cat(out)


def attribution_rule(model: nn.Module, method: str, n_steps: int) -> str:
    """How :func:`attributions` computes `method` for `model` (said in the results)."""
    if positively_homogeneous(model):
        return "exact: x * grad f(x) (a positively homogeneous network, zero baseline)"
    return f"Captum, {n_steps} Gauss-Legendre steps" if method == "integrated_gradients" else "Captum, rescale rule"


def attributions(model: nn.Module, inputs, target, *, method: str = "integrated_gradients", n_steps: int = 32,
                 batch: int = 256, per_sample_roots: bool = False, sample_dim: str = "sample",
                 input_dims=None, exact: bool = True) -> xr.DataArray:
    """Attribution maps for the logit of `target`, baseline all-zero, as a DataArray
    (sample_dim, *input_dims) of the shape of `inputs`, on the CPU.

    ``method``: ``integrated_gradients`` (Sundararajan et al. 2017, `n_steps` Gauss–Legendre
    steps, Captum's default rule) or ``deeplift`` (Shrikumar et al. 2017, rescale rule). Gradients
    come from one backward pass per batch (:func:`summed_gradients`); ``per_sample_roots`` keeps
    Captum's own gradient function (for checking that they agree). For a positively homogeneous
    network (:func:`positively_homogeneous`: lrscope's bias-free FCN and CNN) both methods equal
    x ⊙ ∇f(x) exactly and are computed so, one backward pass instead of `n_steps`
    (``exact=False``: through Captum anyway).

    Parameters
    ----------
    model : torch.nn.Module
    inputs : torch.Tensor or DataArray (sample, *input)
        What the model takes (already as :func:`lrscope.train.data.as_model_input` makes it). A
        DataArray's dims and coords label the result (`sample_dim` and `input_dims` then unused).
    target : tensor or array-like (sample,)
        The class whose logit is attributed, per sample.
    sample_dim : str
        The result's sample dim (default ``sample``; the runner uses ``attr_sample``).
    input_dims : sequence of str, optional
        The result's input dims; default ``input_0``, ``input_1``, ... as in the run store.

    Examples
    --------
    >>> import torch
    >>> from lrscope.train.nets import FCN
    >>> _ = torch.manual_seed(0)
    >>> a = attributions(FCN(6, [8], 2), torch.randn(3, 6), torch.tensor([0, 1, 0]), sample_dim="attr_sample")
    >>> a.dims, a.shape
    (('attr_sample', 'input_0'), (3, 6))
    """
    labelled = inputs if isinstance(inputs, xr.DataArray) else None
    x = torch.as_tensor(np.asarray(labelled.values)) if labelled is not None else inputs
    t = torch.as_tensor(np.asarray(target)) if not isinstance(target, torch.Tensor) else target
    a = attributions_torch(model, x, t.to(x.device), method=method, n_steps=n_steps, batch=batch,
                           per_sample_roots=per_sample_roots, exact=exact).cpu().numpy()
    if labelled is not None:
        return xr.DataArray(a, dims=labelled.dims, coords=labelled.coords)
    dims = [f"input_{i}" for i in range(a.ndim - 1)] if input_dims is None else list(input_dims)
    if len(dims) != a.ndim - 1:
        raise LrscopeError(f"attributions: {len(dims)} input dims given for inputs of shape {tuple(a.shape)}")
    return xr.DataArray(a, dims=[sample_dim, *dims])


def _attr_input(fn: str, attr, sample_dim: str | None) -> tuple[xr.DataArray, str, list[str]]:
    """`attr` as a DataArray, its sample dim and (every other dim) its input dims."""
    if not isinstance(attr, xr.DataArray):  # a plain array: (sample, *input) as attributions() lays them out
        a = np.asarray(attr)
        if a.ndim < 1:
            raise MetricError(f"{fn}: expected (sample, *input) attributions, got a scalar")
        attr = xr.DataArray(a, dims=[sample_dim or SAMPLE, *(f"input_{i}" for i in range(a.ndim - 1))])
    s = resolve_dims(fn, attr, {"sample": sample_dim})["sample"]
    return attr, s, [str(d) for d in attr.dims if d != s]


def _masks_like(fn: str, masks, attr: xr.DataArray, what: str) -> tuple[xr.DataArray, list[str]]:
    """`masks` with every dim of `attr` (size 1 where it had none), in attr's order, its own
    dims last; returns it and its own dims."""
    if not isinstance(masks, xr.DataArray):
        raise MetricError(f"{fn}: {what} must be a DataArray (its dims say which input dims it covers)")
    own = [str(d) for d in masks.dims if d not in attr.dims]
    m = masks.expand_dims([d for d in attr.dims if d not in masks.dims])
    return m.transpose(*attr.dims, *own), own


def region_shares_np(attr, regions) -> np.ndarray:
    """Numpy core of :func:`region_shares`: attr (sample, *input), regions (*input, *region)
    broadcastable masks; returns (*region,)."""
    a = np.abs(np.asarray(attr))
    feat = tuple(range(1, a.ndim))
    reg = np.asarray(regions)
    n_own = reg.ndim - (a.ndim - 1)
    prod = a.reshape(a.shape + (1,) * n_own) * reg
    total = np.where(np.isnan(a), 0, a).sum(feat)
    per = np.where(np.isnan(prod), 0, prod).sum(feat)
    total = total.reshape(total.shape + (1,) * n_own)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        return np.nanmean(per / np.where(total > 0, total, np.nan), 0)


def region_shares(attr, regions, *, sample_dim: str | None = None) -> xr.DataArray:
    """Share of absolute attribution mass on each region (core / spurious / noise), per sample,
    then averaged over samples: Σ_region |a| / Σ_all |a|. Every dim of `attr` but `sample_dim` is
    an input dim. Regions need not cover the input; `regions` may carry dims of its own (one share
    per region, in one pass) and lack input dims (it is broadcast over them).

    Examples
    --------
    >>> attr = xr.DataArray([[1.0, -3.0, 0.0, 0.0]], dims=["attr_sample", "input_0"])
    >>> core = xr.DataArray([True, False, False, False], dims=["input_0"])
    >>> float(region_shares(attr, core))
    0.25
    """
    fn = "region_shares"
    attr, s, feat = _attr_input(fn, attr, sample_dim)
    attr = attr.transpose(s, *feat)
    if isinstance(regions, xr.DataArray) and s in regions.dims:
        raise MetricError(f"{fn}: regions are masks of the input, not per sample (per-sample masks: background_share)")
    reg, own = _masks_like(fn, regions, attr.isel({s: 0}, drop=True), "regions")
    out = region_shares_np(attr.values, reg.values)
    coords = {k: c.variable for k, c in reg.coords.items() if set(c.dims) <= set(own)}
    return annotate(xr.DataArray(out, dims=own, coords=coords), "share of attribution mass", None)


def attribution_entropy_np(attr) -> float:
    """Numpy core of :func:`attribution_entropy`: attr (sample, *input)."""
    a = np.abs(np.asarray(attr, dtype=np.float64))
    a = a.reshape(len(a), -1)
    total = a.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = a / total
        h = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(1) / np.log(a.shape[1])
    h = h[total[:, 0] > 0]
    return h.mean() if len(h) else np.nan


def attribution_entropy(attr, *, sample_dim: str | None = None) -> xr.DataArray:
    """Shannon entropy (nats) of the normalised absolute attribution over input features (every
    dim but `sample_dim`), averaged over samples; divided by log(#features) so it lies in [0, 1]
    (1 = uniform). Samples whose attribution is all zero have no distribution and are left out
    (NaN if all are).

    Examples
    --------
    >>> float(attribution_entropy(xr.DataArray(np.ones((2, 4)), dims=["attr_sample", "input_0"])))
    1.0
    """
    fn = "attribution_entropy"
    attr, s, feat = _attr_input(fn, attr, sample_dim)
    h = attribution_entropy_np(attr.transpose(s, *feat).values)
    return annotate(xr.DataArray(h), "normalised attribution entropy", None)


def background_share_np(attr, masks) -> float:
    """Numpy core of :func:`background_share`: attr (sample, *input), masks broadcastable to it
    (True = object)."""
    a = np.abs(np.asarray(attr))
    feat = tuple(range(1, a.ndim))
    bg = np.where(~np.asarray(masks).astype(bool), a, 0.0)
    bg = np.where(np.isnan(bg), 0, bg).sum(feat)
    total = np.where(np.isnan(a), 0, a).sum(feat)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        return np.nanmean(bg / np.where(total > 0, total, np.nan))


def background_share(attr, masks, *, sample_dim: str | None = None) -> xr.DataArray:
    """Share of absolute attribution on the background, given per-sample foreground masks
    (True = object) over some of the input dims (broadcast over the others, e.g. channels).

    Examples
    --------
    >>> attr = xr.DataArray([[1.0, -3.0, 0.0, 0.0]], dims=["attr_sample", "input_0"])
    >>> fg = xr.DataArray([[True, False, False, False]], dims=["attr_sample", "input_0"])
    >>> float(background_share(attr, fg))
    0.75
    """
    fn = "background_share"
    attr, s, feat = _attr_input(fn, attr, sample_dim)
    attr = attr.transpose(s, *feat)
    m, own = _masks_like(fn, masks, attr, "masks")
    if own:
        raise MetricError(f"{fn}: masks have dims the attributions lack ({', '.join(own)})")
    return annotate(xr.DataArray(background_share_np(attr.values, m.values)), "attribution share on background", False)
