"""The paper's metrics: for each, a numpy core and one labelled wrapper.

Definitions follow the papers (Barsbey et al., ICCV 2025; Springer et al., ICLR 2024); each
docstring names its source. The contract, the same for every
metric here and in ``attribution.py``, ``linear.py`` and ``pruning.py``:

* ``<metric>_np`` is the **numpy core**. The dimensions it works along come *last*, in the order
  its docstring gives (``(..., sample, feature)`` for activations, ``(..., sample, class)`` for
  logits); it is vectorised over any leading ones. The cores of the logits metrics also take dask
  arrays (the runner hands them lazy logits too large to read at once).
* ``<metric>`` is the **labelled wrapper**: it takes DataArrays, finds the dimensions it needs,
  moves them last, calls the core, and returns DataArrays / Datasets over the remaining
  dimensions, in their input order and with their coordinates, with ``long_name`` (and
  ``higher_is_better`` where it applies) in attrs. A plain array is accepted too: its trailing
  axes are named ``sample`` / ``feature`` / ``class`` as the metric needs.
* The dimensions are named with ``sample_dim``, ``feature_dim`` and ``class_dim`` (and
  ``time_dim``, ``kappa_dim`` where they apply) and inferred when that is unambiguous: first from
  the labels' own dimension, then from lrscope's names (``sample`` and ``*_sample`` are sample
  dims, ``neuron`` and ``feature`` feature dims, ``class`` the class dim), then, when exactly one
  role is left open, from the one dimension left. A missing, unknown or ambiguous dimension, or
  labels of the wrong length, is a :class:`MetricError`.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import xarray as xr

from ..errors import LrscopeError


class MetricError(LrscopeError, ValueError):
    """A metric asked of inputs it is not defined on (one class, no samples, a missing dim, ...)."""


def annotate(da: xr.DataArray, long_name: str, higher_is_better: bool | None, **extra) -> xr.DataArray:
    da.attrs.update({"long_name": long_name, **extra})
    if higher_is_better is not None:
        da.attrs["higher_is_better"] = int(higher_is_better)
    return da


# ------------------------------------------------------------------------------- the labelled contract
SAMPLE, FEATURE, CLASS = "sample", "feature", "class"  # the names a plain array's axes get
_NAMED = {  # role -> which dimension names lrscope uses for it
    "sample": lambda d: d == SAMPLE or d.endswith("_sample"),
    "feature": lambda d: d in ("neuron", FEATURE),
    "class": lambda d: d == CLASS,
    "time": lambda d: d == "snapshot",
    "kappa": lambda d: d == "kappa",
}
_DEFAULT = {"sample": SAMPLE, "feature": FEATURE, "class": CLASS, "time": "snapshot", "kappa": "kappa"}


def as_labelled(x, fn: str, names: list[str]) -> xr.DataArray:
    """`x` as a DataArray; a plain array's trailing axes are named `names`, the others dim_0, ..."""
    if isinstance(x, xr.DataArray):
        return x
    a = np.asarray(x)
    if a.ndim < len(names):
        raise MetricError(f"{fn}: expected an array with at least {len(names)} dims ({', '.join(names)}), "
                          f"got shape {a.shape}")
    return xr.DataArray(a, dims=[f"dim_{i}" for i in range(a.ndim - len(names))] + list(names))


def plain_names(given: dict[str, str | None]) -> list[str]:
    return [d if d is not None else _DEFAULT[role] for role, d in given.items()]


def resolve_dims(fn: str, x: xr.DataArray, given: dict[str, str | None], hints=()) -> dict[str, str]:
    """role -> dimension of `x` for each role in `given` (role -> the name the caller gave, or None).

    Given names must be dims of `x`; open roles take a hint (a dim of the labels), else the one
    dim whose name is lrscope's for that role, else (one role open) the one dim left."""
    dims = [str(d) for d in x.dims]
    out: dict[str, str] = {}
    for role, d in given.items():
        if d is None:
            continue
        if not isinstance(d, str) or d not in dims:
            raise MetricError(f"{fn}: {role}_dim={d!r} is not a dimension of the input "
                              f"(dims: {', '.join(dims) or 'none'})")
        if d in out.values():
            raise MetricError(f"{fn}: {d!r} given for two roles")
        out[role] = d
    for role, d in hints:
        if role in given and role not in out and d in dims and d not in out.values():
            out[role] = d
    for role in given:
        if role in out:
            continue
        cands = [d for d in dims if _NAMED[role](d) and d not in out.values()]
        if len(cands) > 1:
            raise MetricError(f"{fn}: which dim is the {role} dim is ambiguous ({', '.join(cands)}); "
                              f"pass {role}_dim=")
        if cands:
            out[role] = cands[0]
    missing = [r for r in given if r not in out]
    rest = [d for d in dims if d not in out.values()]
    if len(missing) == 1 and len(rest) == 1:
        out[missing[0]] = rest[0]
    elif missing:
        raise MetricError(f"{fn}: cannot tell which dim is the {missing[0]} dim (dims: {', '.join(dims) or 'none'}); "
                          f"pass {missing[0]}_dim=")
    return out


def _hint(*labels) -> tuple[tuple[str, str], ...]:
    """The sample dim the labels are along, when they are a 1-d DataArray."""
    for lab in labels:
        if isinstance(lab, xr.DataArray) and lab.ndim == 1:
            return (("sample", str(lab.dims[0])),)
    return ()


def label_vector(fn: str, labels, x: xr.DataArray, sample_dim: str, what: str = "labels") -> np.ndarray:
    """1-d labels, one per sample of `x` (a DataArray of labels must lie along the sample dim)."""
    if isinstance(labels, xr.DataArray) and labels.ndim == 1 and labels.dims[0] != sample_dim:
        raise MetricError(f"{fn}: {what} lie along {labels.dims[0]!r}, the sample dim is {sample_dim!r}")
    v = np.asarray(labels)
    n = x.sizes[sample_dim]
    if v.shape != (n,):
        raise MetricError(f"{fn}: {what} must be one value per sample ({n} along {sample_dim!r}), got shape {v.shape}")
    return v


def _ufunc(core, x: xr.DataArray, core_dims: list[str], out_core=((),), **kwargs):
    """`core` applied along `core_dims` of `x` (moved last): the other dims keep their order and
    coords; the input's attrs are dropped (its ``description`` would mislabel the result)."""
    return xr.apply_ufunc(core, x, input_core_dims=[core_dims], output_core_dims=[list(d) for d in out_core],
                          kwargs=kwargs, dask="allowed", keep_attrs=False)


# ------------------------------------------------------------------------------- accuracy
def group_accuracy_np(logits, y, b) -> dict:
    """Numpy core of :func:`group_accuracy`: logits (..., sample, class), y and b (sample,) ints.

    Returns a dict of arrays over the leading dims: ``unbiased_accuracy``, ``group_accuracy``
    (..., group) for the ``groups`` present, ``worst_group_accuracy``, and ``bc_accuracy`` /
    ``ba_accuracy`` where there are such samples."""
    yv, bv = np.asarray(y), np.asarray(b)
    if yv.size == 0:
        raise MetricError("accuracy of an empty sample set")
    # a sample whose logits are not all finite (a diverged network: overflow, inf - inf) has no
    # prediction: its correctness, and every accuracy it enters, is NaN (undefined), not "wrong"
    pred = np.where(np.isnan(logits), -np.inf, logits).argmax(-1)
    correct = np.where(np.isfinite(logits).all(-1), (pred == yv).astype(np.float32), np.nan)
    g = yv * (int(bv.max()) + 1) + bv
    groups = np.unique(g)
    per_group = np.stack([correct[..., np.flatnonzero(g == k)].mean(-1) for k in groups], -1)
    out = {"unbiased_accuracy": correct.mean(-1), "group_accuracy": per_group, "groups": groups,
           "worst_group_accuracy": per_group.min(-1)}
    bc = bv != yv
    if bc.any():
        out["bc_accuracy"] = correct[..., np.flatnonzero(bc)].mean(-1)
    if (~bc).any():
        out["ba_accuracy"] = correct[..., np.flatnonzero(~bc)].mean(-1)
    return out


def group_accuracy(logits, y, b, *, sample_dim: str | None = None, class_dim: str | None = None) -> xr.Dataset:
    """Accuracy per (y, b) group, the unbiased (all-sample) accuracy, the worst-group accuracy,
    and the bias-aligned (b = y) / bias-conflicting (b ≠ y) accuracies.

    On the unbiased test set (y ⟂ b) the plain accuracy is the paper's *unbiased test accuracy*;
    worst-group accuracy is the minimum over the groups present (Sagawa et al. 2020). Groups are
    numbered y · n_b + b with n_b = max(b) + 1. A sample with non-finite logits has no prediction:
    the accuracies it enters are NaN.

    Parameters
    ----------
    logits : DataArray (..., sample, class)
    y, b : array-like (sample,)
        Class and bias labels (ints).
    sample_dim, class_dim : str, optional
        Inferred when unambiguous (see the module docstring).

    Returns
    -------
    Dataset with ``unbiased_accuracy``, ``group_accuracy`` (group, ...), ``worst_group_accuracy``
    and, where such samples exist, ``bc_accuracy`` and ``ba_accuracy``.

    Examples
    --------
    >>> logits = xr.DataArray([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], dims=["test_sample", "class"])
    >>> out = group_accuracy(logits, [0, 1, 1, 0], [0, 1, 0, 1])
    >>> float(out.unbiased_accuracy), float(out.worst_group_accuracy), float(out.bc_accuracy)
    (0.75, 0.0, 0.5)
    """
    fn = "group_accuracy"
    given = {"sample": sample_dim, "class": class_dim}
    logits = as_labelled(logits, fn, plain_names(given))
    d = resolve_dims(fn, logits, given, _hint(y, b))
    yv = label_vector(fn, y, logits, d["sample"], "y")
    bv = label_vector(fn, b, logits, d["sample"], "b")
    t = logits.transpose(..., d["sample"], d["class"])
    lead = t.dims[:-2]
    coords = {k: c.variable for k, c in t.coords.items() if set(c.dims) <= set(lead)}
    r = group_accuracy_np(t.data, yv, bv)

    def lab(v, extra=()):
        return xr.DataArray(v, dims=(*lead, *extra), coords=coords)

    per_group = lab(r["group_accuracy"], ("group",)).assign_coords(group=r["groups"]).transpose("group", ...)
    out = xr.Dataset({
        "unbiased_accuracy": annotate(lab(r["unbiased_accuracy"]), "unbiased test accuracy", True),
        "group_accuracy": annotate(per_group, "accuracy per (y, b) group", True),
        "worst_group_accuracy": annotate(lab(r["worst_group_accuracy"]), "worst-group accuracy", True),
    })
    if "bc_accuracy" in r:
        out["bc_accuracy"] = annotate(lab(r["bc_accuracy"]), "bias-conflicting accuracy", True)
    if "ba_accuracy" in r:
        out["ba_accuracy"] = annotate(lab(r["ba_accuracy"]), "bias-aligned accuracy", True)
    return out


# ------------------------------------------------------------------------------- loss ratio
def loss_ratio_np(bc_loss_sum, ba_loss_sum):
    """Numpy core of :func:`loss_ratio` (elementwise)."""
    total = bc_loss_sum + ba_loss_sum
    return np.where(total > 0, bc_loss_sum / np.where(total > 0, total, np.nan), np.nan)


def loss_ratio(bc_loss_sum, ba_loss_sum) -> xr.DataArray:
    """Bias-conflicting share of each minibatch's loss: Σ BC losses / Σ all losses (Barsbey et
    al. §5, Fig. 12). NaN where a minibatch's total loss is zero.

    Elementwise: the two inputs are aligned and broadcast as xarray arithmetic does.

    Examples
    --------
    >>> loss_ratio(xr.DataArray([1.0, 0.0, 3.0], dims=["iteration"]),
    ...            xr.DataArray([3.0, 0.0, 1.0], dims=["iteration"])).values.tolist()
    [0.25, nan, 0.75]
    """
    bc, ba = as_labelled(bc_loss_sum, "loss_ratio", []), as_labelled(ba_loss_sum, "loss_ratio", [])
    r = xr.apply_ufunc(loss_ratio_np, bc, ba, dask="allowed", join="inner", keep_attrs=False)
    return annotate(r, "bias-conflicting loss ratio", None)


def per_sample_ce_np(logits, y):
    """Numpy core of :func:`per_sample_ce`: logits (..., class), y (...) broadcast against them.
    NaN logits are skipped in the log-sum-exp (as xarray's reductions skip them)."""
    z = logits.astype(np.float64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
        m = np.nanmax(z, -1)
    lse = m + np.log(np.nansum(np.exp(z - m[..., None]), -1))
    zy = np.where(np.arange(z.shape[-1]) == np.asarray(y)[..., None], z, 0).sum(-1)  # exact: z_y plus zeros
    return lse - zy


def _check_classes(fn: str, y, n_classes: int) -> None:
    v = np.asarray(y)
    if v.size and (v.min() < 0 or v.max() >= n_classes):
        raise MetricError(f"{fn}: labels must lie in [0, {n_classes}), got {v.min()}..{v.max()}")


def _along(fn: str, y, logits: xr.DataArray, sample_dim: str | None, class_dim: str) -> xr.DataArray:
    """Labels to broadcast against the logits: a DataArray as it is, a plain array (one label per
    sample) along the sample dim."""
    if isinstance(y, xr.DataArray) and sample_dim is None:
        return y
    s = resolve_dims(fn, logits, {"sample": sample_dim, "class": class_dim}, _hint(y))["sample"]
    if isinstance(y, xr.DataArray):
        return y
    return xr.DataArray(label_vector(fn, y, logits, s), dims=[s])


def per_sample_ce(logits, y, *, sample_dim: str | None = None, class_dim: str | None = None) -> xr.DataArray:
    """Cross-entropy of each sample from its logits (log-sum-exp stabilised).

    `y`: a DataArray is broadcast against the logits' other dims; a plain array holds one label
    per sample, along `sample_dim` (inferred when unambiguous).

    Examples
    --------
    >>> logits = xr.DataArray([[0.0, 0.0], [2.0, 0.0]], dims=["train_sample", "class"])
    >>> per_sample_ce(logits, xr.DataArray([0, 1], dims=["train_sample"])).round(4).values.tolist()
    [0.6931, 2.1269]
    """
    fn = "per_sample_ce"
    logits = as_labelled(logits, fn, plain_names({"sample": sample_dim, "class": class_dim}))
    c = resolve_dims(fn, logits, {"class": class_dim})["class"]
    yd = _along(fn, y, logits, sample_dim, c)
    _check_classes(fn, yd, logits.sizes[c])
    ce = xr.apply_ufunc(per_sample_ce_np, logits, yd, input_core_dims=[[c], []], dask="allowed", keep_attrs=False)
    return annotate(ce, "cross-entropy per sample", False, units="nats")


def ba_bc_loss_ratio_np(logits, y, bias_conflicting):
    """Numpy core of :func:`ba_bc_loss_ratio`: logits (..., sample, class), y and
    bias_conflicting (sample,)."""
    bc = np.asarray(bias_conflicting).astype(bool)
    if bc.all() or (~bc).all():
        raise MetricError("BA/BC loss ratio needs both bias-aligned and bias-conflicting samples")
    loss = per_sample_ce_np(logits, y)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        ba_mean = np.nanmean(loss[..., np.flatnonzero(~bc)], -1)
        bc_mean = np.nanmean(loss[..., np.flatnonzero(bc)], -1)
    return ba_mean / np.where(bc_mean > 0, bc_mean, np.nan)


def ba_bc_loss_ratio(logits, y, bias_conflicting, *, sample_dim: str | None = None,
                     class_dim: str | None = None) -> xr.DataArray:
    """Average bias-aligned loss / average bias-conflicting loss (low: the shortcut dominates).

    Examples
    --------
    >>> logits = xr.DataArray([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]], dims=["train_sample", "class"])
    >>> r = ba_bc_loss_ratio(logits, [0, 0, 1], [False, True, True])
    >>> round(float(r), 4)
    0.0597
    """
    fn = "ba_bc_loss_ratio"
    given = {"sample": sample_dim, "class": class_dim}
    logits = as_labelled(logits, fn, plain_names(given))
    d = resolve_dims(fn, logits, given, _hint(y, bias_conflicting))
    yv = label_vector(fn, y, logits, d["sample"], "y")
    bc = label_vector(fn, bias_conflicting, logits, d["sample"], "bias_conflicting")
    _check_classes(fn, yv, logits.sizes[d["class"]])
    r = _ufunc(ba_bc_loss_ratio_np, logits, [d["sample"], d["class"]], y=yv, bias_conflicting=bc)
    return annotate(r, "average BA loss / average BC loss", None)


# ------------------------------------------------------------------------------- compressibility
def _unit_scaled(a: np.ndarray) -> np.ndarray:
    """Non-negative vectors (last axis) divided by their largest finite entry where it is positive:
    the scale-free measures below then neither underflow (tiny activations, whose squares would be
    subnormal) nor overflow; vectors with an inf or all zeros are left as they are."""
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
        m = np.nanmax(np.where(np.isinf(a), np.nan, a), axis=-1, keepdims=True) if a.shape[-1] else None
    if m is None:
        return a
    ok = np.isfinite(m) & (m > 0) & ~np.isinf(a).any(-1, keepdims=True)
    return np.where(ok, a / np.where(ok, m, 1.0), a)


def compressibility_np(a, q: float = 2, kappa: float = 0.1) -> np.ndarray:
    """Numpy core of :func:`compressibility`, along the last axis."""
    if not 0 <= kappa <= 1:
        raise MetricError(f"kappa must be in [0, 1], got {kappa}")
    if isinstance(q, bool) or not isinstance(q, (int, float, np.integer, np.floating)) or not q > 0:
        raise MetricError(f"compressibility needs a norm order q > 0 (‖·‖_q is no norm below), got {q!r}")
    a = _unit_scaled(np.abs(np.asarray(a).astype(np.float64)))
    d = a.shape[-1]
    k = math.ceil(kappa * d)
    if d - k > 0:  # the d - k smallest are dropped (a partition finds them; their order does not matter)
        num = np.linalg.norm(np.partition(a, d - k - 1, axis=-1)[..., : d - k], ord=q, axis=-1)
    else:
        num = np.zeros(a.shape[:-1])
    den = np.linalg.norm(a, ord=q, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(den > 0, 1 - num / np.where(den > 0, den, 1), 1.0)
    return np.where(np.isnan(a).any(-1), np.nan, c)


def compressibility(x, *, feature_dim: str | None = None, q: float = 2, kappa: float = 0.1) -> xr.DataArray:
    """(q, κ)-compressibility of vectors along `feature_dim`: 1 − ‖z − z_κ‖_q / ‖z‖_q, where z_κ
    keeps the ⌈κd⌉ largest-magnitude entries (Barsbey et al. §3.2). 1 for an all-zero vector
    (nothing is lost by compressing it), NaN for a vector with a NaN.

    Parameters
    ----------
    x : DataArray (..., feature)
    feature_dim : str, optional
        The dim of the vectors (``neuron`` for activations; inferred when unambiguous).
    q, kappa : float
        The norm and the fraction of entries kept, κ ∈ [0, 1].

    Examples
    --------
    >>> z = xr.DataArray([[3.0, 4.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]], dims=["probe_sample", "neuron"])
    >>> compressibility(z, kappa=0.25).values.tolist()   # keeps the 4 of (3, 4): 1 - 3/5
    [0.4, 0.1339745962155614]
    """
    fn = "compressibility"
    given = {"feature": feature_dim}
    x = as_labelled(x, fn, plain_names(given))
    f = resolve_dims(fn, x, given)["feature"]
    out = _ufunc(compressibility_np, x, [f], q=q, kappa=kappa)
    return annotate(out, f"({q:g}, {kappa:g})-compressibility", True, q=q, kappa=kappa)


def sparsity_np(a, tol: float = 0.0) -> np.ndarray:
    """Numpy core of :func:`sparsity`, along the last axis."""
    return (np.abs(a) <= tol).mean(-1)


def sparsity(x, *, feature_dim: str | None = None, tol: float = 0.0) -> xr.DataArray:
    """Sparsity 1 − ‖z‖₀ / d along `feature_dim` (entries with |z| <= tol count as zero).

    Examples
    --------
    >>> float(sparsity(xr.DataArray([0.0, 2.0, 0.0, 0.0], dims=["neuron"])))
    0.75
    """
    fn = "sparsity"
    given = {"feature": feature_dim}
    x = as_labelled(x, fn, plain_names(given))
    f = resolve_dims(fn, x, given)["feature"]
    return annotate(_ufunc(sparsity_np, x, [f], tol=tol), "sparsity", True)


def pq_index_np(a, p: float = 1, q: float = 2):
    """Numpy core of :func:`pq_index`, along the last axis (NaN entries are skipped in the norms)."""
    if not 0 < p < q:
        raise MetricError(f"pq_index needs 0 < p < q, got p={p}, q={q}")
    d = a.shape[-1]
    a = _unit_scaled(np.abs(np.asarray(a, dtype=np.float64)))
    with np.errstate(over="ignore", invalid="ignore"):  # a diverged network's activations overflow: inf is the truth
        lp = np.nansum(a**p, -1) ** (1 / p)
        lq = np.nansum(a**q, -1) ** (1 / q)
        return np.where(lq > 0, 1 - d ** (1 / q - 1 / p) * lp / np.where(lq > 0, lq, np.nan), 0.0)


def pq_index(x, *, feature_dim: str | None = None, p: float = 1, q: float = 2) -> xr.DataArray:
    """PQ-index of Diao et al. (2023): 1 − d^(1/q − 1/p) ‖z‖_p / ‖z‖_q for 0 < p < q, along
    `feature_dim`. 0 for a constant-magnitude vector, approaching
    1 − d^(1/q−1/p) for a 1-sparse one; higher is sparser (more compressible). 0 for an all-zero
    vector.

    Examples
    --------
    >>> float(pq_index(xr.DataArray([0.0, 2.0, 0.0, 0.0], dims=["neuron"])))   # 1 - 4^(-1/2)
    0.5
    """
    fn = "pq_index"
    given = {"feature": feature_dim}
    x = as_labelled(x, fn, plain_names(given))
    f = resolve_dims(fn, x, given)["feature"]
    return annotate(_ufunc(pq_index_np, x, [f], p=p, q=q), f"PQ-index (p={p:g}, q={q:g})", True, p=p, q=q)


# ------------------------------------------------------------------------------- representation
def _class_onehot(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    classes = np.unique(labels)
    return classes, (labels[:, None] == classes[None, :]).astype(np.float64)


def class_separation_np(acts, labels) -> np.ndarray:
    """Numpy core of :func:`class_separation`: acts (..., sample, feature), labels (sample,)."""
    classes, onehot = _class_onehot(np.asarray(labels))
    if len(classes) < 2:
        raise MetricError("class separation needs at least 2 classes")
    a = np.asarray(acts).astype(np.float64)
    norm = np.linalg.norm(a, axis=-1, keepdims=True)
    u = np.divide(a, norm, out=np.zeros_like(a), where=norm > 0)
    counts = onehot.sum(0)  # (K,)
    sums = onehot.T @ u  # (..., K, d)
    means = sums / counts[:, None]
    within = 1 - (means**2).sum(-1)  # (..., K): mean of (1 - cos) over pairs in class k
    d_within = within.mean(-1)
    d_total = 1 - (means.mean(-2) ** 2).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d_total > 0, 1 - d_within / np.where(d_total > 0, d_total, 1), 0.0)


def class_separation(acts, labels, *, sample_dim: str | None = None, feature_dim: str | None = None) -> xr.DataArray:
    """Class separation R² = 1 − d̄_within / d̄_total with d = 1 − cosine similarity
    (Kornblith et al. 2021; Barsbey et al. §3.3), computed in O(N·d) from per-class sums of unit
    vectors: Σ_{m,n∈k} cos(x_m, x_n) = ‖Σ_{m∈k} u_m‖². All-zero vectors have similarity 0 to
    everything. Needs ≥ 2 classes.

    Parameters
    ----------
    acts : DataArray (..., sample, feature)
    labels : array-like (sample,)
    sample_dim, feature_dim : str, optional
        Inferred when unambiguous (see the module docstring).

    Examples
    --------
    >>> acts = xr.DataArray(np.eye(4), dims=["probe_sample", "neuron"])
    >>> float(class_separation(acts, [0, 1, 2, 3]))   # orthogonal classes, one sample each
    1.0
    """
    fn = "class_separation"
    given = {"sample": sample_dim, "feature": feature_dim}
    acts = as_labelled(acts, fn, plain_names(given))
    d = resolve_dims(fn, acts, given, _hint(labels))
    lab = label_vector(fn, labels, acts, d["sample"])
    return annotate(_ufunc(class_separation_np, acts, [d["sample"], d["feature"]], labels=lab),
                  "class separation R²", True)


def selectivity_np(acts, labels, eps: float = 1e-8) -> np.ndarray:
    """Numpy core of :func:`selectivity`: acts (..., sample, feature), labels (sample,); returns
    (..., feature)."""
    classes, onehot = _class_onehot(np.asarray(labels))
    if len(classes) < 2:
        raise MetricError("selectivity needs at least 2 distinct labels")
    a = np.asarray(acts).astype(np.float64)
    with np.errstate(invalid="ignore"):
        lowest = np.nanmin(a) if a.size and not np.isnan(a).all() else 0.0
    if lowest < 0:  # CSI of signed features is not bounded (N(0, 1) features: -1.25 ... 12.9)
        raise MetricError(f"selectivity is defined on non-negative activations (post-ReLU); these reach {lowest:.3g}: "
                          "use a non-negative representation, e.g. max(0, h)")
    counts = onehot.sum(0)
    at = np.swapaxes(a, -1, -2)  # (..., d, n): the sums over samples as BLAS matmuls (einsum's loop is ~10x slower)
    means = (at @ onehot) / counts  # (..., d, K)
    active = ((at > 0).astype(np.float64) @ onehot) / counts
    kmax = means.argmax(-1)
    pi_max = np.take_along_axis(means, kmax[..., None], -1)[..., 0]
    pi_rest = (means.sum(-1) - pi_max) / (len(classes) - 1)
    rho = np.take_along_axis(active, kmax[..., None], -1)[..., 0]
    return rho * (pi_max - pi_rest) / (pi_max + pi_rest + eps)


def selectivity(acts, labels, *, sample_dim: str | None = None, feature_dim: str | None = None, eps: float = 1e-8,
                name: str = "class") -> xr.DataArray:
    """Selectivity index with coverage per neuron (Barsbey et al. §3.3, after Morcos et al.):
    ρ_max · (π_max − π_−max) / (π_max + π_−max + ε), π_max the largest label-conditional mean
    activation, π_−max the mean of the other labels' means, ρ_max the fraction of samples of the
    argmax label on which the neuron is active (> 0). With class labels this is CSI, with bias
    labels BSI. A dead neuron scores 0. Needs ≥ 2 labels and non-negative activations (with
    them the index lies in [0, 1]; MetricError otherwise). Returns a DataArray over `feature_dim`
    (and the other dims of `acts`).

    Examples
    --------
    >>> acts = xr.DataArray([[2.0], [0.0], [0.0], [0.0]], dims=["probe_sample", "neuron"])
    >>> selectivity(acts, [0, 0, 1, 1]).round(6).values.tolist()   # pi_max 1, pi_rest 0, rho 1/2
    [0.5]
    """
    fn = f"{name}_selectivity" if name in ("class", "bias") else "selectivity"
    given = {"sample": sample_dim, "feature": feature_dim}
    acts = as_labelled(acts, fn, plain_names(given))
    d = resolve_dims(fn, acts, given, _hint(labels))
    lab = label_vector(fn, labels, acts, d["sample"])
    if len(np.unique(lab)) < 2:
        raise MetricError(f"{name} selectivity needs at least 2 distinct labels")
    out = _ufunc(selectivity_np, acts, [d["sample"], d["feature"]], [[d["feature"]]], labels=lab, eps=eps)
    long = {"class": "class selectivity index (CSI)", "bias": "bias selectivity index (BSI)"}.get(name, name)
    return annotate(out, long, name == "class")


def class_selectivity(acts, labels, *, sample_dim: str | None = None, feature_dim: str | None = None) -> xr.DataArray:
    """CSI per neuron: :func:`selectivity` with the class labels.

    Examples
    --------
    >>> acts = xr.DataArray([[2.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]], dims=["probe_sample", "neuron"])
    >>> class_selectivity(acts, [0, 0, 1, 1]).round(6).values.tolist()
    [0.5, 0.0]
    """
    return selectivity(acts, labels, sample_dim=sample_dim, feature_dim=feature_dim, name="class")


def bias_selectivity(acts, bias_labels, *, sample_dim: str | None = None,
                     feature_dim: str | None = None) -> xr.DataArray:
    """BSI per neuron: :func:`selectivity` with the bias labels.

    Examples
    --------
    >>> acts = xr.DataArray([[2.0], [0.0], [0.0], [0.0]], dims=["probe_sample", "neuron"])
    >>> bias_selectivity(acts, [0, 1, 0, 1]).round(6).values.tolist()
    [0.5]
    """
    return selectivity(acts, bias_labels, sample_dim=sample_dim, feature_dim=feature_dim, name="bias")


def neuron_survival_np(csi, bsi) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Numpy core of :func:`neuron_survival`: csi, bsi (..., time, feature); returns the
    class-dominant fraction and the class / bias survival, each (..., time)."""
    class_dom = np.asarray(csi) > np.asarray(bsi)
    final = class_dom[..., -1:, :]
    n_class = class_dom.sum(-1)
    n_bias = (~class_dom).sum(-1)
    surv_c = (class_dom & final).sum(-1) / np.where(n_class > 0, n_class, np.nan)
    surv_b = ((~class_dom) & (~final)).sum(-1) / np.where(n_bias > 0, n_bias, np.nan)
    return class_dom.mean(-1), surv_c, surv_b


def neuron_survival(csi, bsi, *, feature_dim: str | None = None, time_dim: str | None = None) -> xr.Dataset:
    """Neuron survival (Barsbey et al. supplement, Fig. 18): a neuron is class-dominant when
    CSI > BSI, else bias-dominant. For each time t: of the neurons class-dominant at t, the share
    still class-dominant at the last time; likewise for bias-dominant neurons. NaN where no neuron
    has that role at t. `time_dim` is ``snapshot`` when unambiguous.

    Examples
    --------
    >>> csi = xr.DataArray([[0.5, 0.1, 0.3], [0.5, 0.4, 0.0]], dims=["snapshot", "neuron"])
    >>> bsi = xr.DataArray([[0.1, 0.2, 0.1], [0.1, 0.2, 0.2]], dims=["snapshot", "neuron"])
    >>> neuron_survival(csi, bsi).class_neuron_survival.values.tolist()
    [0.5, 1.0]
    """
    fn = "neuron_survival"
    given = {"time": time_dim, "feature": feature_dim}
    csi = as_labelled(csi, fn, plain_names(given))
    bsi = as_labelled(bsi, fn, plain_names(given))
    d = resolve_dims(fn, csi, given)
    core = [d["time"], d["feature"]]
    if set(core) - set(bsi.dims):
        raise MetricError(f"{fn}: bsi lacks the dims {', '.join(sorted(set(core) - set(bsi.dims)))}")
    frac, sc, sb = xr.apply_ufunc(neuron_survival_np, csi, bsi, input_core_dims=[core, core],
                                  output_core_dims=[[d["time"]]] * 3, dask="allowed", keep_attrs=False)
    return xr.Dataset({
        "class_dominant_fraction": annotate(frac, "share of class-dominant neurons", True),
        "class_neuron_survival": annotate(sc, "class-dominant neurons surviving to the end", None),
        "bias_neuron_survival": annotate(sb, "bias-dominant neurons surviving to the end", None),
    })


# ------------------------------------------------------------------------------- importance weights
def importance_weights_np(logits, y):
    """Numpy core of :func:`importance_weights`: logits (..., class), y (...) broadcast against
    them. NaN logits are skipped in the log-sum-exps (an all-NaN row stays NaN)."""
    # 1 - p_y = exp(logsumexp_{j != y} z_j - logsumexp_j z_j): exact even when p_y is ~1
    z = logits.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
        m = np.nanmax(z, -1)
        lse = m + np.log(np.nansum(np.exp(z - m[..., None]), -1))
        is_y = np.arange(z.shape[-1]) == np.asarray(y)[..., None]
        zo = np.where(~is_y, z, -np.inf)
        mo = np.nanmax(zo, -1)
        lse_o = mo + np.log(np.nansum(np.exp(zo - mo[..., None]), -1))
        return np.exp(lse_o - lse)


def importance_weights(logits, y, *, sample_dim: str | None = None, class_dim: str | None = None) -> xr.DataArray:
    """Per-sample importance weights λ_i = 1 − p_θ(y_i | x_i): the scale of each sample's
    cross-entropy gradient w.r.t. its logits (Springer et al. §6; σ(−y f(x)) in the binary case).

    `y`: a DataArray is broadcast against the logits' other dims; a plain array holds one label
    per sample, along `sample_dim` (inferred when unambiguous).

    Examples
    --------
    >>> logits = xr.DataArray([[0.0, 0.0], [10.0, -10.0]], dims=["train_sample", "class"])
    >>> importance_weights(logits, [0, 1]).round(6).values.tolist()
    [0.5, 1.0]
    """
    fn = "importance_weights"
    logits = as_labelled(logits, fn, plain_names({"sample": sample_dim, "class": class_dim}))
    c = resolve_dims(fn, logits, {"class": class_dim})["class"]
    yd = _along(fn, y, logits, sample_dim, c)
    _check_classes(fn, yd, logits.sizes[c])
    w = xr.apply_ufunc(importance_weights_np, logits, yd, input_core_dims=[[c], []], dask="allowed", keep_attrs=False)
    return annotate(w, "importance weight 1 - p(y|x)", None)


def lorenz_curve_np(w, points: int = 101) -> np.ndarray:
    """Numpy core of :func:`lorenz_curve`: along the last axis; returns (..., points)."""
    if isinstance(points, bool) or not isinstance(points, (int, np.integer)) or points < 2:
        raise MetricError(f"lorenz_curve needs points >= 2 (an integer), got {points!r}")
    a = _non_negative(np.asarray(w).astype(np.float64), "lorenz_curve")
    s = -np.sort(-a, axis=-1)
    c = np.cumsum(s, axis=-1)
    tot = c[..., -1:]
    c = np.divide(c, tot, out=np.full_like(c, np.nan), where=tot > 0)
    c = np.concatenate([np.zeros(c.shape[:-1] + (1,)), c], -1)
    frac = np.linspace(0, 1, points)
    xs = np.linspace(0, 1, a.shape[-1] + 1)
    return np.apply_along_axis(lambda r: np.interp(frac, xs, r), -1, c)


def lorenz_curve(w, *, sample_dim: str | None = None, points: int = 101) -> xr.DataArray:
    """Lorenz curve as in Springer et al. Fig. 5: the share of total importance carried by the
    top-k fraction of samples along `sample_dim`, at `points` ≥ 2
    evenly spaced fractions (dim ``fraction``; the diagonal = uniform).

    Examples
    --------
    >>> w = xr.DataArray([0.0, 0.0, 0.0, 1.0], dims=["train_sample"])
    >>> lorenz_curve(w, points=5).values.tolist()   # the top quarter carries everything
    [0.0, 1.0, 1.0, 1.0, 1.0]
    """
    fn = "lorenz_curve"
    given = {"sample": sample_dim}
    w = as_labelled(w, fn, plain_names(given))
    s = resolve_dims(fn, w, given)["sample"]
    out = _ufunc(lorenz_curve_np, w, [s], [["fraction"]], points=points)
    return annotate(out.assign_coords(fraction=np.linspace(0, 1, points)), "cumulative importance share", None)


def _non_negative(a: np.ndarray, fn: str) -> np.ndarray:
    """Importance weights are ≥ 0: the Gini coefficient and the Lorenz curve of a vector with
    negative entries are not defined (the Gini can leave [0, 1])."""
    if (a < 0).any():
        raise MetricError(f"{fn} needs non-negative weights, got a minimum of {np.nanmin(a):g}")
    return a


def gini_np(w) -> np.ndarray:
    """Numpy core of :func:`gini`, along the last axis."""
    a = np.sort(_non_negative(np.asarray(w).astype(np.float64), "gini"), axis=-1)
    n = a.shape[-1]
    tot = a.sum(-1)
    idx = np.arange(1, n + 1)
    return np.divide(((2 * idx - n - 1) * a).sum(-1), n * tot, out=np.zeros_like(tot), where=tot > 0)


def gini(w, *, sample_dim: str | None = None) -> xr.DataArray:
    """Gini coefficient of non-negative weights along `sample_dim`; 0 uniform, → 1 concentrated.

    Examples
    --------
    >>> round(float(gini(xr.DataArray([0.0] * 9 + [1.0], dims=["train_sample"]))), 12)
    0.9
    """
    fn = "gini"
    given = {"sample": sample_dim}
    w = as_labelled(w, fn, plain_names(given))
    s = resolve_dims(fn, w, given)["sample"]
    return annotate(_ufunc(gini_np, w, [s]), "Gini coefficient of importance weights", False)


def last_mistake(batch_index, batch_logits, y, *, n_samples: int) -> xr.DataArray:
    """Learning order from the per-step training record: for every training sample, the last
    iteration at which it was in the minibatch and misclassified (-1: never misclassified when
    seen). Samples fit late (memorised last) have large values; in biased sets these are
    expected to be the bias-conflicting ones (Barsbey et al. §5; the loss-ratio story).

    batch_index: (iteration, batch) sample ids (-1 for padding); batch_logits: (iteration,
    batch, class), or a store's summary record ``batch_correct`` (iteration, batch) bools
    (log_logits="summary"); y: (n_samples,) labels. Positional arrays (the store's layout), not
    labelled: the result is over ``train_sample``.

    Examples
    --------
    >>> idx = np.array([[0, 1], [2, 3], [1, -1]])
    >>> logits = np.array([[[1, 0], [1, 0]], [[0, 1], [0, 1]], [[1, 0], [9, 9]]])
    >>> last_mistake(idx, logits, np.array([0, 1, 0, 1]), n_samples=5).values.tolist()
    [-1, 2, 1, -1, -1]
    """
    idx = np.asarray(batch_index)
    yv = np.asarray(y)
    valid = idx >= 0
    safe = np.where(valid, idx, 0)
    rec = np.asarray(batch_logits)
    if rec.dtype == bool and rec.shape == idx.shape:  # the summary record: correct or not
        wrong = valid & ~rec
    else:
        logits = rec.astype(np.float32)
        wrong = valid & (np.nan_to_num(logits, nan=-np.inf).argmax(-1) != yv[safe])
    it = np.broadcast_to(np.arange(idx.shape[0])[:, None], idx.shape)
    out = np.full(n_samples, -1, dtype=np.int64)
    np.maximum.at(out, safe[wrong], it[wrong])
    return annotate(xr.DataArray(out, dims=["train_sample"]), "last iteration misclassified in its minibatch", None)
