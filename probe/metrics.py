"""The paper's metrics as pure functions on labelled arrays.

Each takes xarray objects (or arrays; ``dim`` names the sample / feature dimensions) and returns
labelled xarray objects with ``long_name`` and ``higher_is_better`` in attrs. Definitions follow
PAPER.md; each docstring names its source. All are vectorised over any extra dimensions
(snapshot, run, ...) that the inputs carry.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from ..errors import LrscopeError


class MetricError(LrscopeError, ValueError):
    """A metric asked of inputs it is not defined on (one class, no samples, ...)."""


def _attrs(da: xr.DataArray, long_name: str, higher_is_better: bool | None, **extra) -> xr.DataArray:
    da.attrs.update({"long_name": long_name, **extra})
    if higher_is_better is not None:
        da.attrs["higher_is_better"] = int(higher_is_better)
    return da


def _as_da(x, dims) -> xr.DataArray:
    if isinstance(x, xr.DataArray):
        return x
    x = np.asarray(x)
    return xr.DataArray(x, dims=dims[-x.ndim:] if len(dims) >= x.ndim else [f"dim_{i}" for i in range(x.ndim)])


# ------------------------------------------------------------------------------- accuracy
def group_accuracy(logits: xr.DataArray, y: xr.DataArray, b: xr.DataArray, *, sample_dim: str,
                   class_dim: str = "class") -> xr.Dataset:
    """Accuracy per (y, b) group, the unbiased (all-sample) accuracy, the worst-group accuracy,
    and the bias-aligned (b = y) / bias-conflicting (b ≠ y) accuracies.

    On the unbiased test set (y ⟂ b) the plain accuracy is the paper's *unbiased test accuracy*;
    worst-group accuracy is the minimum over the groups present (Sagawa et al. 2020). Groups are
    numbered y · n_b + b with n_b = max(b) + 1.
    """
    # a sample whose logits are not all finite (a diverged network: overflow, inf - inf) has no
    # prediction: its correctness, and every accuracy it enters, is NaN (undefined), not "wrong"
    pred = logits.fillna(-np.inf).argmax(class_dim, skipna=False)
    correct = (pred == y).astype(np.float32).where(np.isfinite(logits).all(class_dim))
    yv, bv = np.asarray(y), np.asarray(b)
    if yv.size == 0:
        raise MetricError("accuracy of an empty sample set")
    g = yv * (int(bv.max()) + 1) + bv
    groups = np.unique(g)
    per_group = xr.concat([correct.isel({sample_dim: np.flatnonzero(g == k)}).mean(sample_dim, skipna=False)
                           for k in groups], dim="group").assign_coords(group=groups)
    bc = bv != yv
    out = xr.Dataset({
        "unbiased_accuracy": _attrs(correct.mean(sample_dim, skipna=False), "unbiased test accuracy", True),
        "group_accuracy": _attrs(per_group, "accuracy per (y, b) group", True),
        "worst_group_accuracy": _attrs(per_group.min("group", skipna=False), "worst-group accuracy", True),
    })
    if bc.any():
        out["bc_accuracy"] = _attrs(correct.isel({sample_dim: np.flatnonzero(bc)}).mean(sample_dim, skipna=False),
                                    "bias-conflicting accuracy", True)
    if (~bc).any():
        out["ba_accuracy"] = _attrs(correct.isel({sample_dim: np.flatnonzero(~bc)}).mean(sample_dim, skipna=False),
                                    "bias-aligned accuracy", True)
    return out


# ------------------------------------------------------------------------------- loss ratio
def loss_ratio(bc_loss_sum: xr.DataArray, ba_loss_sum: xr.DataArray) -> xr.DataArray:
    """Bias-conflicting share of each minibatch's loss: Σ BC losses / Σ all losses (Barsbey et
    al. §5, Fig. 12). NaN where a minibatch's total loss is zero."""
    total = bc_loss_sum + ba_loss_sum
    r = xr.where(total > 0, bc_loss_sum / total.where(total > 0), np.nan)
    return _attrs(r, "bias-conflicting loss ratio", None)


def per_sample_ce(logits: xr.DataArray, y: xr.DataArray, class_dim: str = "class") -> xr.DataArray:
    """Cross-entropy of each sample from its logits (log-sum-exp stabilised)."""
    z = logits.astype(np.float64)
    m = z.max(class_dim)
    lse = m + np.log(np.exp(z - m).sum(class_dim))
    zy = z.isel({class_dim: xr.DataArray(np.asarray(y), dims=y.dims)})
    return lse - zy


def ba_bc_loss_ratio(logits: xr.DataArray, y: xr.DataArray, bias_conflicting: xr.DataArray, *,
                     sample_dim: str, class_dim: str = "class") -> xr.DataArray:
    """Average bias-aligned loss / average bias-conflicting loss (low: the shortcut dominates)."""
    loss = per_sample_ce(logits, y, class_dim)
    bc = np.asarray(bias_conflicting).astype(bool)
    if bc.all() or (~bc).all():
        raise MetricError("BA/BC loss ratio needs both bias-aligned and bias-conflicting samples")
    ba_mean = loss.isel({sample_dim: np.flatnonzero(~bc)}).mean(sample_dim)
    bc_mean = loss.isel({sample_dim: np.flatnonzero(bc)}).mean(sample_dim)
    return _attrs(ba_mean / bc_mean.where(bc_mean > 0), "average BA loss / average BC loss", None)


# ------------------------------------------------------------------------------- compressibility
def compressibility(x, *, dim: str, q: float = 2, kappa: float = 0.1) -> xr.DataArray:
    """(q, κ)-compressibility of vectors along `dim`: 1 − ‖z − z_κ‖_q / ‖z‖_q, where z_κ keeps
    the ⌈κd⌉ largest-magnitude entries (Barsbey et al. §3.2). 1 for an all-zero vector (nothing
    is lost by compressing it)."""
    if not 0 <= kappa <= 1:
        raise MetricError(f"kappa must be in [0, 1], got {kappa}")
    x = _as_da(x, [dim])
    d = x.sizes[dim]
    k = math.ceil(kappa * d)
    a = np.abs(x.transpose(..., dim).values.astype(np.float64))
    if d - k > 0:  # the d - k smallest are dropped (a partition finds them; their order does not matter)
        num = np.linalg.norm(np.partition(a, d - k - 1, axis=-1)[..., : d - k], ord=q, axis=-1)
    else:
        num = np.zeros(a.shape[:-1])
    den = np.linalg.norm(a, ord=q, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(den > 0, 1 - num / np.where(den > 0, den, 1), 1.0)
    c = np.where(np.isnan(a).any(-1), np.nan, c)
    out = xr.DataArray(c, dims=[dd for dd in x.transpose(..., dim).dims if dd != dim],
                       coords={k_: v for k_, v in x.coords.items() if dim not in v.dims})
    return _attrs(out, f"({q:g}, {kappa:g})-compressibility", True, q=q, kappa=kappa)


def sparsity(x, *, dim: str, tol: float = 0.0) -> xr.DataArray:
    """Sparsity 1 − ‖z‖₀ / d along `dim` (entries with |z| <= tol count as zero)."""
    x = _as_da(x, [dim])
    return _attrs((np.abs(x) <= tol).mean(dim), "sparsity", True)


def pq_index(x, *, dim: str, p: float = 1, q: float = 2) -> xr.DataArray:
    """PQ-index of Diao et al. (2023): 1 − d^(1/q − 1/p) ‖z‖_p / ‖z‖_q for 0 < p < q.
    0 for a constant-magnitude vector, approaching 1 − d^(1/q−1/p) for a 1-sparse one; higher is
    sparser (more compressible). 0 for an all-zero vector."""
    if not 0 < p < q:
        raise MetricError(f"pq_index needs 0 < p < q, got p={p}, q={q}")
    x = _as_da(x, [dim])
    d = x.sizes[dim]
    a = np.abs(x)
    lp = (a**p).sum(dim) ** (1 / p)
    lq = (a**q).sum(dim) ** (1 / q)
    v = xr.where(lq > 0, 1 - d ** (1 / q - 1 / p) * lp / lq.where(lq > 0), 0.0)
    return _attrs(v, f"PQ-index (p={p:g}, q={q:g})", True, p=p, q=q)


# ------------------------------------------------------------------------------- representation
def _class_onehot(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    classes = np.unique(labels)
    return classes, (labels[:, None] == classes[None, :]).astype(np.float64)


def class_separation(acts, labels, *, sample_dim: str, feature_dim: str) -> xr.DataArray:
    """Class separation R² = 1 − d̄_within / d̄_total with d = 1 − cosine similarity
    (Kornblith et al. 2021; Barsbey et al. §3.3), computed in O(N·d) from per-class sums of unit
    vectors: Σ_{m,n∈k} cos(x_m, x_n) = ‖Σ_{m∈k} u_m‖². All-zero vectors have similarity 0 to
    everything. Needs ≥ 2 classes."""
    acts = _as_da(acts, [sample_dim, feature_dim])
    lab = np.asarray(labels)
    classes, onehot = _class_onehot(lab)
    if len(classes) < 2:
        raise MetricError("class separation needs at least 2 classes")
    a = acts.transpose(..., sample_dim, feature_dim).values.astype(np.float64)
    norm = np.linalg.norm(a, axis=-1, keepdims=True)
    u = np.divide(a, norm, out=np.zeros_like(a), where=norm > 0)
    counts = onehot.sum(0)  # (K,)
    sums = onehot.T @ u  # (..., K, d)
    means = sums / counts[:, None]
    within = 1 - (means**2).sum(-1)  # (..., K): mean of (1 - cos) over pairs in class k
    d_within = within.mean(-1)
    d_total = 1 - (means.mean(-2) ** 2).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(d_total > 0, 1 - d_within / np.where(d_total > 0, d_total, 1), 0.0)
    dims = [dd for dd in acts.transpose(..., sample_dim, feature_dim).dims if dd not in (sample_dim, feature_dim)]
    return _attrs(xr.DataArray(r2, dims=dims), "class separation R²", True)


def selectivity(acts, labels, *, sample_dim: str, feature_dim: str, eps: float = 1e-8,
                name: str = "class") -> xr.DataArray:
    """Selectivity index with coverage per neuron (Barsbey et al. §3.3, after Morcos et al.):
    ρ_max · (π_max − π_−max) / (π_max + π_−max + ε), π_max the largest label-conditional mean
    activation, π_−max the mean of the other labels' means, ρ_max the fraction of samples of the
    argmax label on which the neuron is active (> 0). With class labels this is CSI, with bias
    labels BSI. A dead neuron scores 0. Needs ≥ 2 labels. Returns a DataArray over `feature_dim`."""
    acts = _as_da(acts, [sample_dim, feature_dim])
    lab = np.asarray(labels)
    classes, onehot = _class_onehot(lab)
    if len(classes) < 2:
        raise MetricError(f"{name} selectivity needs at least 2 distinct labels")
    a = acts.transpose(..., sample_dim, feature_dim).values.astype(np.float64)
    counts = onehot.sum(0)
    at = np.swapaxes(a, -1, -2)  # (..., d, n): the sums over samples as BLAS matmuls (einsum's loop is ~10x slower)
    means = (at @ onehot) / counts  # (..., d, K)
    active = ((at > 0).astype(np.float64) @ onehot) / counts
    kmax = means.argmax(-1)
    pi_max = np.take_along_axis(means, kmax[..., None], -1)[..., 0]
    pi_rest = (means.sum(-1) - pi_max) / (len(classes) - 1)
    rho = np.take_along_axis(active, kmax[..., None], -1)[..., 0]
    csi = rho * (pi_max - pi_rest) / (pi_max + pi_rest + eps)
    dims = [dd for dd in acts.transpose(..., sample_dim, feature_dim).dims if dd != sample_dim]
    long = {"class": "class selectivity index (CSI)", "bias": "bias selectivity index (BSI)"}.get(name, name)
    return _attrs(xr.DataArray(csi, dims=dims), long, name == "class")


def neuron_survival(csi: xr.DataArray, bsi: xr.DataArray, *, time_dim: str = "snapshot") -> xr.Dataset:
    """Neuron survival (Barsbey et al. supplement, Fig. 18): a neuron is class-dominant when
    CSI > BSI, else bias-dominant. For each time t: of the neurons class-dominant at t, the share
    still class-dominant at the last time; likewise for bias-dominant neurons. NaN where no neuron
    has that role at t."""
    class_dom = csi > bsi
    final = class_dom.isel({time_dim: -1})
    n_class = class_dom.sum(csi.dims[-1])
    n_bias = (~class_dom).sum(csi.dims[-1])
    surv_c = (class_dom & final).sum(csi.dims[-1]) / n_class.where(n_class > 0)
    surv_b = ((~class_dom) & (~final)).sum(csi.dims[-1]) / n_bias.where(n_bias > 0)
    return xr.Dataset({
        "class_dominant_fraction": _attrs(class_dom.mean(csi.dims[-1]), "share of class-dominant neurons", True),
        "class_neuron_survival": _attrs(surv_c, "class-dominant neurons surviving to the end", None),
        "bias_neuron_survival": _attrs(surv_b, "bias-dominant neurons surviving to the end", None),
    })


# ------------------------------------------------------------------------------- importance weights
def importance_weights(logits: xr.DataArray, y: xr.DataArray, class_dim: str = "class") -> xr.DataArray:
    """Per-sample importance weights λ_i = 1 − p_θ(y_i | x_i): the scale of each sample's
    cross-entropy gradient w.r.t. its logits (Springer et al. §6; σ(−y f(x)) in the binary case)."""
    # 1 - p_y = exp(logsumexp_{j != y} z_j - logsumexp_j z_j): exact even when p_y is ~1
    z = logits.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # unevaluated (NaN) rows stay NaN
        m = z.max(class_dim)
        lse = m + np.log(np.exp(z - m).sum(class_dim))
        is_y = xr.DataArray(np.arange(z.sizes[class_dim]), dims=[class_dim]) == y
        zo = z.where(~is_y, -np.inf)
        mo = zo.max(class_dim)
        lse_o = mo + np.log(np.exp(zo - mo).sum(class_dim))
        w = np.exp(lse_o - lse)
    return _attrs(w, "importance weight 1 - p(y|x)", None)


def lorenz_curve(w: xr.DataArray, *, dim: str, points: int = 101) -> xr.DataArray:
    """Lorenz curve as in Springer et al. Fig. 5: the share of total importance carried by the
    top-k fraction of samples, at `points` evenly spaced fractions (the diagonal = uniform)."""
    a = w.transpose(..., dim).values.astype(np.float64)
    s = -np.sort(-a, axis=-1)
    c = np.cumsum(s, axis=-1)
    tot = c[..., -1:]
    c = np.divide(c, tot, out=np.full_like(c, np.nan), where=tot > 0)
    c = np.concatenate([np.zeros(c.shape[:-1] + (1,)), c], -1)
    frac = np.linspace(0, 1, points)
    xs = np.linspace(0, 1, a.shape[-1] + 1)
    out = np.apply_along_axis(lambda r: np.interp(frac, xs, r), -1, c)
    dims = [d for d in w.transpose(..., dim).dims if d != dim] + ["fraction"]
    return _attrs(xr.DataArray(out, dims=dims, coords={"fraction": frac}), "cumulative importance share", None)


def gini(w: xr.DataArray, *, dim: str) -> xr.DataArray:
    """Gini coefficient of non-negative weights along `dim` (0 uniform, → 1 concentrated)."""
    a = np.sort(w.transpose(..., dim).values.astype(np.float64), axis=-1)
    n = a.shape[-1]
    tot = a.sum(-1)
    idx = np.arange(1, n + 1)
    g = np.divide(((2 * idx - n - 1) * a).sum(-1), n * tot, out=np.zeros_like(tot), where=tot > 0)
    dims = [d for d in w.transpose(..., dim).dims if d != dim]
    return _attrs(xr.DataArray(g, dims=dims), "Gini coefficient of importance weights", False)


def last_mistake(batch_index, batch_logits, y, *, n_samples: int) -> xr.DataArray:
    """Learning order from the per-step training record: for every training sample, the last
    iteration at which it was in the minibatch and misclassified (-1: never misclassified when
    seen). Samples fit late (memorised last) have large values; in biased sets these are
    expected to be the bias-conflicting ones (Barsbey et al. §5; the loss-ratio story).

    batch_index: (iteration, batch) sample ids (-1 for padding); batch_logits: (iteration,
    batch, class); y: (n_samples,) labels."""
    idx = np.asarray(batch_index)
    logits = np.asarray(batch_logits, dtype=np.float32)
    yv = np.asarray(y)
    valid = idx >= 0
    safe = np.where(valid, idx, 0)
    wrong = valid & (np.nan_to_num(logits, nan=-np.inf).argmax(-1) != yv[safe])
    it = np.broadcast_to(np.arange(idx.shape[0])[:, None], idx.shape)
    out = np.full(n_samples, -1, dtype=np.int64)
    np.maximum.at(out, safe[wrong], it[wrong])
    return _attrs(xr.DataArray(out, dims=["train_sample"]), "last iteration misclassified in its minibatch", None)
