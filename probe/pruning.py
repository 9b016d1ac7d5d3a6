"""Pruning curves and κ-prunability (Barsbey et al. §3.2, supplement Figs. 21–22).

κ-prunability is the paper's: the mean over κ = 0, 0.1, …, 0.9 of the retention ratio
Acc(f^κ)/Acc(f) of the structurally pruned network, not clipped (a pruned network may beat the
unpruned one: the paper's own Table 1 reaches 1.029).

Structured pruning removes whole units (neurons of Linear layers, filters of Conv layers; the
output head is kept). The paper says which units (neurons, nodes/kernels) but not how they are
ranked; the default criterion ranks each layer's units by the L2 norm of their incoming weights
and removes the ⌊κ·n⌋ lowest of every layer (``incoming``). The others (``CRITERIA``): the same
norms ranked over all layers together (``incoming-global``), the L2 norm of each unit's outgoing
weights (the next layer's column, or the head's) per layer (``outgoing``), and the product of the
two (``in-x-out``). The outgoing criteria need a network whose layers form a chain (lrscope's FCN
and VGG-like CNN); elsewhere they are not defined.

Two ways to evaluate a pruned network, the same logits:
- masks on a copy of the weights: a structured mask zeroes whole output units, and a forward hook
  zeroes the unit's output — after the BatchNorm that follows a conv when there is one (its shift
  would otherwise revive the channel), so a pruned unit outputs exactly zero downstream;
- for a chain of Linear/Conv layers with channel-wise operations between them (ReLU, max/average
  pooling, Flatten at the input or after a global average pool: lrscope's FCN and CNN), the kept
  rows and columns sliced out of the weights: a pruned unit's output, or a pruned column's input,
  contributes exactly nothing either way, and the pruned network costs fewer FLOPs. The first
  layer's input is never pruned by structured pruning, so its units' outputs (after the
  channel-wise operations that follow it) are computed once per batch of samples and every pruned
  network starts from the kept ones; every κ, kind and criterion is evaluated on that batch before
  the next one is read (one pass over the evaluation samples).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..errors import LrscopeError
from .metrics import MetricError, annotate, as_labelled, plain_names, resolve_dims

KAPPAS = tuple(round(0.1 * i, 1) for i in range(10))
KINDS = ("structured", "magnitude", "column")
CRITERIA = ("incoming", "incoming-global", "outgoing", "in-x-out")
DEFAULT_CRITERION = "incoming"
CRITERION_WORDS = {
    "incoming": "lowest L2 norm of the incoming weights, per layer",
    "incoming-global": "lowest L2 norm of the incoming weights, over all layers together",
    "outgoing": "lowest L2 norm of the outgoing weights, per layer",
    "in-x-out": "lowest product of the incoming and outgoing L2 norms, per layer",
}
EVAL_BATCH = 256  # samples per forward pass (larger batches were slower on CPU: cache misses)
CACHE_BYTES = 256 << 20  # the first layer's outputs held at once (samples are taken in chunks below this)


def check_criteria(criteria) -> list[str]:
    """`criteria` (a name, comma-separated names, ``all``, or a list) as a list of known criteria,
    the default first (its prunability is the headline); LrscopeError naming the valid ones."""
    if isinstance(criteria, str):
        items = list(CRITERIA) if criteria.strip() == "all" else [c.strip() for c in criteria.split(",")]
    elif isinstance(criteria, (list, tuple)) and all(isinstance(c, str) for c in criteria):
        items = [c.strip() for c in criteria]
    else:
        raise LrscopeError(f"pruning criterion must be a name or a list of names, got {criteria!r}")
    bad = [c for c in items if c not in CRITERIA]
    if bad or not items:
        raise LrscopeError(f"unknown pruning criterion {', '.join(map(repr, bad)) or repr(criteria)}; "
                           f"valid: {', '.join(CRITERIA)} (or all)")
    return [DEFAULT_CRITERION] + [c for c in CRITERIA if c in items and c != DEFAULT_CRITERION]


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
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


# ------------------------------------------------------------------------------- chains
_CHANNELWISE = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d)


def layer_chain(model: nn.Module) -> list[nn.Module] | None:
    """The modules of lrscope's FCN or VGG-like CNN in order, head last, when they form a chain of
    Linear/Conv layers with only channel-wise operations between them (each unit of a layer feeds
    only the matching input of the next); None otherwise."""
    from ..train.nets import FCN, VGGLike

    if type(model) not in (FCN, VGGLike) or not isinstance(getattr(model, "features", None), nn.Sequential) \
            or type(getattr(model, "head", None)) is not nn.Linear:
        return None
    mods = list(model.features)
    seen_layer, spatial = False, False
    for i, m in enumerate(mods):
        if type(m) is nn.Conv2d:
            if m.groups != 1 or m.padding_mode != "zeros":
                return None
            seen_layer = spatial = True
        elif type(m) is nn.Linear:
            if spatial:
                return None
            seen_layer = True
        elif type(m) is nn.Flatten:
            # at the input, or after a global average pool (channels map 1:1 to features)
            pooled = i > 0 and type(mods[i - 1]) is nn.AdaptiveAvgPool2d and mods[i - 1].output_size in (1, (1, 1))
            if seen_layer and not pooled:
                return None
            spatial = False
        elif type(m) is nn.AdaptiveAvgPool2d:
            if m.output_size not in (1, (1, 1)):
                return None
        elif type(m) not in _CHANNELWISE:
            return None
    if spatial:
        return None
    return mods + [model.head]


def _outgoing_norms(model: nn.Module, layers: list[tuple[str, nn.Module]],
                    weights: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Per prunable layer of a chain, the L2 norm of each unit's outgoing weights (the next layer's
    input column for that unit, or the head's)."""
    if layer_chain(model) is None:
        raise MetricError(f"outgoing-weight pruning criteria need a network whose layers form a chain "
                          f"(lrscope's fcn or cnn); {type(model).__name__} is not one")
    nxt = [weights[n] for n, _ in layers[1:]] + [model.head.weight.detach()]
    return [_column_norms(w) for w in nxt]


def structured_keep(model: nn.Module, kappa: float, criterion: str = DEFAULT_CRITERION,
                    weights: dict[str, torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The units structured pruning keeps at κ under `criterion`: one boolean mask per prunable
    layer (in `prunable_layers` order). `weights`: the layers' weights by name (default: the
    model's own)."""
    layers = prunable_layers(model)
    if weights is None:
        weights = {n: m.weight.detach() for n, m in layers}
    if criterion not in CRITERIA:
        raise LrscopeError(f"unknown pruning criterion {criterion!r}; valid: {', '.join(CRITERIA)}")
    incoming = [_unit_norms(weights[n]) for n, _ in layers]
    if criterion == "incoming":
        return [_kept(s, kappa) for s in incoming]
    if criterion == "incoming-global":
        keep = _kept(torch.cat(incoming), kappa)
        return list(keep.split([len(s) for s in incoming]))
    out = _outgoing_norms(model, layers, weights)
    scores = out if criterion == "outgoing" else [a * b for a, b in zip(incoming, out)]
    return [_kept(s, kappa) for s in scores]


@dataclass
class _Cut:
    """One pruned network: the kept input features/channels of the first layer (None: all), the
    kept output units of each prunable layer (None: all), and replacement weights (None: the
    originals). A chain evaluates it by slicing; other networks by masking."""

    in0: torch.Tensor | None
    rows: list
    reweigh: tuple[str, float] | None = None  # ("magnitude" | "column", κ): weights masked in place

    def key(self):
        idx = lambda t: None if t is None else tuple(t.tolist())  # noqa: E731
        return (idx(self.in0), tuple(idx(r) for r in self.rows), self.reweigh)

    def weights(self, originals: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """The masked weights of a magnitude (or masked column) cut, made when evaluated (not held
        for every κ at once); None: the original weights, sliced by in0 and rows."""
        if self.reweigh is None:
            return None
        kind, kappa = self.reweigh
        if kind == "magnitude":
            return _magnitude_weights(originals, kappa)
        out = []
        for w in originals:  # column pruning by masks (any network): each layer's lowest-norm input columns
            keep = _kept(_column_norms(w), kappa)
            out.append(w * keep.view((1, -1) + (1,) * (w.dim() - 2)).to(w.dtype))
        return out

    def empty(self) -> bool:
        return any(r is not None and len(r) == 0 for r in [self.in0, *self.rows])


def _idx(keep: torch.Tensor):
    return None if bool(keep.all()) else keep.nonzero().squeeze(1)


def _magnitude_weights(originals: list[torch.Tensor], kappa: float) -> list[torch.Tensor]:
    """The weights with the ⌊κ·N⌋ smallest |w| over all prunable layers set to zero."""
    allw = torch.cat([w.abs().flatten() for w in originals])
    k = int(math.floor(kappa * allw.numel()))
    if k == 0:
        return list(originals)
    thr = allw.kthvalue(k).values
    # a layer left whole keeps its tensor (the chain then reuses the first layer's outputs)
    return [torch.where(w.abs() <= thr, torch.zeros_like(w), w) if bool((w.abs() <= thr).any()) else w
            for w in originals]


def _cut(model: nn.Module, kind: str, kappa: float, criterion: str, originals: list[torch.Tensor],
         chain: bool) -> _Cut:
    layers = prunable_layers(model)
    n = len(layers)
    if kind == "magnitude" or (kind == "column" and not chain):
        k = int(math.floor(kappa * (sum(w.numel() for w in originals) if kind == "magnitude" else 1)))
        return _Cut(None, [None] * n, (kind, kappa) if k > 0 or kind == "column" else None)
    if kind == "structured":
        keep = structured_keep(model, kappa, criterion, {nm: w for (nm, _), w in zip(layers, originals)})
        return _Cut(None, [_idx(k) for k in keep])
    # column pruning of a chain: layer l's kept input columns are the only units layer l-1 computes
    cols = [_idx(_kept(_column_norms(w), kappa)) for w in originals]
    return _Cut(cols[0], cols[1:] + [None])


class _ChainEval:
    """Evaluates cuts of a chain network by slicing (see the module docstring)."""

    def __init__(self, model: nn.Module, chain: list[nn.Module]):
        self.mods = chain[:-1]
        self.head = chain[-1]
        self.layer_at = [i for i, m in enumerate(self.mods) if isinstance(m, (nn.Linear, nn.Conv2d))]
        # the prefix computed once per batch: up to (not including) the second prunable layer
        self.split = self.layer_at[1] if len(self.layer_at) > 1 else len(self.mods)

    @staticmethod
    def _layer(m: nn.Module, h, w, b):
        if isinstance(m, nn.Conv2d):
            return nn.functional.conv2d(h, w, b, m.stride, m.padding, m.dilation)
        return nn.functional.linear(h, w, b)

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The unpruned first layer's outputs (all units) after the channel-wise ops that follow it."""
        h = x
        for m in self.mods[: self.split]:
            h = m(h)
        return h

    def logits(self, cut: _Cut, x: torch.Tensor, pre: torch.Tensor | None, weights=None,
               first_whole: bool = True) -> torch.Tensor:
        """`weights`: the cut's masked weights, if it has them (`_Cut.weights`); `first_whole`: the
        first layer's weights are the originals (its outputs `pre` can be reused)."""
        weights = weights or [self.mods[i].weight for i in self.layer_at]
        if pre is not None and cut.in0 is None and first_whole:
            r0 = cut.rows[0]
            h, cur, start, li = (pre if r0 is None else pre.index_select(1, r0)), r0, self.split, 1
        else:
            h, cur, start, li = x, None, 0, 0
        for i in range(start, len(self.mods)):
            m = self.mods[i]
            if i in self.layer_at:
                if li == 0 and cut.in0 is not None:
                    h = h.index_select(1, cut.in0)
                    cur = cut.in0
                w, b, r = weights[li], m.bias, cut.rows[li]
                if cur is not None:
                    w = w.index_select(1, cur)
                if r is not None:
                    w = w.index_select(0, r)
                    b = None if b is None else b.index_select(0, r)
                h, cur, li = self._layer(m, h, w, b), r, li + 1
            else:
                h = m(h)
        wh = self.head.weight if cur is None else self.head.weight.index_select(1, cur)
        return nn.functional.linear(h, wh, self.head.bias)


def _masked(model: nn.Module, cut: _Cut, originals: list[torch.Tensor]) -> list:
    """Set the prunable weights to the cut's masked weights; returns the output hooks to remove."""
    layers = prunable_layers(model)
    masked = cut.weights(originals)
    if masked is not None:
        for (_, m), w in zip(layers, masked):
            m.weight.copy_(w)
        return []
    outputs = _output_module(model)
    hooks = []
    for li, ((name, m), w) in enumerate(zip(layers, originals)):
        w = w.clone()
        if li == 0 and cut.in0 is not None:  # column pruning of the first layer's inputs
            keep = torch.zeros(w.shape[1], dtype=torch.bool, device=w.device)
            keep[cut.in0] = True
            w *= keep.view((1, -1) + (1,) * (w.dim() - 2)).to(w.dtype)
        r = cut.rows[li]
        if r is not None:
            keep = torch.zeros(w.shape[0], dtype=torch.bool, device=w.device)
            keep[r] = True
            w *= keep.view((-1,) + (1,) * (w.dim() - 1)).to(w.dtype)
            if not (outputs[name] is m and getattr(m, "bias", None) is None):
                mask = keep.to(w.dtype)

                def hook(mod, inp, out, mask=mask):
                    return out * mask.view((1, -1) + (1,) * (out.dim() - 2))

                hooks.append(outputs[name].register_forward_hook(hook))
        m.weight.copy_(w)
    return hooks


def _fast_layout(x: torch.Tensor) -> torch.Tensor:
    """Images in channels-last layout: the convolutions and poolings of the pruned networks ran
    ~1.5× faster so on CPU (measured on the Colored MNIST CNN)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def pruned_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, specs, kappas=KAPPAS, *,
                   sliced: bool = True, batch: int = EVAL_BATCH,
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Correct predictions of the pruned network for each (kind, criterion) of `specs` and each κ:
    an integer array (spec, kappa). Each distinct pruned network is evaluated once; a chain
    network (``sliced``) is evaluated by slicing, all networks on one batch of samples before the
    next. `x` holds raw stored inputs (uint8 images are scaled); the model is restored afterwards."""
    from ..train.data import as_model_input

    layers = prunable_layers(model)
    if not layers:
        raise LrscopeError("model has no prunable Linear/Conv layers besides its head")
    originals = [m.weight.detach().clone() for _, m in layers]
    chain = layer_chain(model) if sliced else None
    cuts, where = {}, np.zeros((len(specs), len(kappas)), dtype=np.int64)
    order = []
    for s, (kind, criterion) in enumerate(specs):
        for j, kappa in enumerate(kappas):
            cut = _cut(model, kind, kappa, criterion, originals, chain is not None)
            key = cut.key()
            if key not in cuts:
                cuts[key] = len(order)
                order.append(cut)
            where[s, j] = cuts[key]
    ev = _ChainEval(model, chain) if chain is not None else None
    correct = np.zeros(len(order), dtype=np.int64)
    model.eval()
    n = len(y)
    try:
        with torch.inference_mode():
            per_sample = 1
            if ev is not None:
                per_sample = max(1, ev.prefix(as_model_input(x[:1])).numel() * 4)
            chunk = max(batch, min(n, CACHE_BYTES // per_sample) // batch * batch)
            done = 0
            for c0 in range(0, n, chunk):
                xs = [_fast_layout(as_model_input(xb)) for xb in x[c0:c0 + chunk].split(batch)]
                ys = y[c0:c0 + chunk].split(batch)
                pres = [ev.prefix(xb) for xb in xs] if ev is not None else [None] * len(xs)
                for k, cut in enumerate(order):
                    if ev is not None and not cut.empty():
                        ws = cut.weights(originals)
                        whole = ws is None or ws[0] is originals[0]
                        for xb, yb, pre in zip(xs, ys, pres):
                            correct[k] += int((ev.logits(cut, xb, pre, ws, whole).argmax(1) == yb).sum())
                    else:
                        hooks = _masked(model, cut, originals)
                        try:
                            for xb, yb in zip(xs, ys):
                                correct[k] += int((model(xb).argmax(1) == yb).sum())
                        finally:
                            for h in hooks:
                                h.remove()
                            for (_, m), w in zip(layers, originals):
                                m.weight.copy_(w)
                    done += 1
                    if progress is not None:
                        progress(done, len(order) * -(-n // chunk))
    finally:
        with torch.no_grad():
            for (_, m), w in zip(layers, originals):
                m.weight.copy_(w)
    return correct[where]


def pruning_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, kind: str = "structured",
                  criterion: str = DEFAULT_CRITERION, kappas=KAPPAS, sliced: bool = True,
                  unpruned: float | None = None) -> xr.DataArray:
    """Accuracy of the pruned network for each κ (fraction of units / weights / columns removed).

    ``kind``: ``structured`` (whole units: neurons of each Linear layer, filters of each Conv layer,
    output layer kept, ranked by ``criterion``: see :data:`CRITERIA`), ``magnitude`` (global
    unstructured, smallest |w|), ``column`` (lowest-norm input columns of each layer). The model
    is restored afterwards. ``sliced``: evaluate lrscope's FCN and CNN on their kept rows and
    columns (the same accuracies as masking, with fewer FLOPs); False always masks. ``unpruned``
    is accepted for compatibility and ignored (κ = 0 is evaluated with the others).
    """
    if kind not in KINDS:
        raise LrscopeError(f"unknown pruning kind {kind!r}; valid: {', '.join(KINDS)}")
    if criterion not in CRITERIA:
        raise LrscopeError(f"unknown pruning criterion {criterion!r}; valid: {', '.join(CRITERIA)}")
    kappas = [float(k) for k in kappas]
    if any(not 0 <= k <= 1 for k in kappas):
        raise LrscopeError(f"kappa values must be in [0, 1], got {kappas}")
    correct = pruned_correct(model, x, y, [(kind, criterion)], kappas, sliced=sliced)[0]
    da = xr.DataArray(correct / len(y), dims=["kappa"], coords={"kappa": kappas})
    extra = {"criterion": criterion} if kind == "structured" else {}
    return annotate(da, f"accuracy after {kind} pruning", True, kind=kind, evaluated_samples=len(y), **extra)


def accuracy_se(acc, n: int):
    """Binomial standard error of an accuracy measured on n samples: sqrt(a (1 − a) / n)."""
    return np.sqrt(np.asarray(acc) * (1 - np.asarray(acc)) / max(n, 1))


# a pruning curve's attrs (kind, evaluated_on) stay on the measures made from it
def _kappa_curve(fn: str, curve, kappa_dim) -> tuple[xr.DataArray, str]:
    given = {"kappa": kappa_dim}
    curve = as_labelled(curve, fn, plain_names(given))
    return curve, resolve_dims(fn, curve, given)["kappa"]


def prunability_np(acc, kappas=None) -> np.ndarray:
    """Numpy core of :func:`prunability`: accuracies (..., kappa) at `kappas` (the unpruned one
    is at κ = 0 when `kappas` has it, else first)."""
    acc = np.asarray(acc)
    at0 = np.flatnonzero(np.asarray(kappas) == 0.0) if kappas is not None else []
    base = acc[..., at0[0] if len(at0) else 0]
    ratio = acc / np.where(base > 0, base, np.nan)[..., None]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        return np.nanmean(ratio, -1)


def prunability(curve, *, kappa_dim: str | None = None) -> xr.DataArray:
    """κ-prunability (Barsbey et al. 2025, §3.2): the mean over κ of the retention ratio
    Acc(f^κ)/Acc(f), not clipped: above 1 when pruning raised the accuracy (the paper's Table 1
    reaches 1.029). The paper's text says *sum* of the ratios over κ ∈ [0, 0.9]; its Table 1 values
    (all near 1) are only on the scale of the mean, so the mean is what lrscope calls prunability,
    and the sum (:func:`prunability_sum`: the mean times the number of κ) is stored beside it. NaN
    when the unpruned accuracy is 0. `kappa_dim` is ``kappa`` when unambiguous.

    Examples
    --------
    >>> curve = xr.DataArray([0.99, 0.60], dims=["kappa"], coords={"kappa": [0.0, 0.5]})
    >>> round(float(prunability(curve)), 4)   # (1 + 0.60 / 0.99) / 2
    0.803
    >>> float(prunability(xr.DataArray([0.5, 0.6], dims=["kappa"], coords={"kappa": [0.0, 0.5]})))
    1.1
    """
    curve, k = _kappa_curve("prunability", curve, kappa_dim)
    kappas = curve[k].values if k in curve.coords else None
    p = xr.apply_ufunc(prunability_np, curve, input_core_dims=[[k]], kwargs={"kappas": kappas}, keep_attrs=True)
    return annotate(p, "κ-prunability (mean accuracy retention)", True)


def prunability_sum_np(acc, kappas=None) -> np.ndarray:
    """Numpy core of :func:`prunability_sum`: the mean retention ratio times its number of terms."""
    acc = np.asarray(acc)
    return prunability_np(acc, kappas) * np.isfinite(acc).sum(-1)


def prunability_sum(curve, *, kappa_dim: str | None = None) -> xr.DataArray:
    """The sum over κ of the retention ratios Acc(f^κ)/Acc(f) — the reading of Barsbey et al.'s
    §3.2 text ("the sum of these retention ratios over a range of κ"); :func:`prunability` is the
    mean, the scale of their Table 1.

    Examples
    --------
    >>> curve = xr.DataArray([0.99, 0.60], dims=["kappa"], coords={"kappa": [0.0, 0.5]})
    >>> round(float(prunability_sum(curve)), 4)   # 1 + 0.60 / 0.99
    1.6061
    """
    curve, k = _kappa_curve("prunability_sum", curve, kappa_dim)
    kappas = curve[k].values if k in curve.coords else None
    p = xr.apply_ufunc(prunability_sum_np, curve, input_core_dims=[[k]], kwargs={"kappas": kappas}, keep_attrs=True)
    return annotate(p, "κ-prunability as a sum over κ (the paper's text)", True)


def pruned_accuracy_np(acc) -> np.ndarray:
    """Numpy core of :func:`pruned_accuracy`: accuracies (..., kappa)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        return np.nanmean(np.asarray(acc), -1)


def pruned_accuracy(curve, *, kappa_dim: str | None = None) -> xr.DataArray:
    """Mean pruned accuracy: the mean over κ of Acc(f^κ) itself, not divided by Acc(f). An extra
    view of the pruning curve, not the paper's prunability (:func:`prunability` is): it mixes how
    accurate the network is with how much pruning costs it.

    Examples
    --------
    >>> curve = xr.DataArray([0.99, 0.60], dims=["kappa"], coords={"kappa": [0.0, 0.5]})
    >>> round(float(pruned_accuracy(curve)), 4)
    0.795
    """
    curve, k = _kappa_curve("pruned_accuracy", curve, kappa_dim)
    return annotate(xr.apply_ufunc(pruned_accuracy_np, curve, input_core_dims=[[k]], keep_attrs=True),
                  "mean pruned accuracy (over κ)", True)
