"""Linear-probe feature quality (Springer et al. 2024, §3.1).

On a group-balanced set of frozen penultimate features, fit one logistic-regression probe for
the class label y (the core feature) and one for the bias label b (the spurious feature), and
report each probe's error on a held-out, group-stratified half. The solver minimises the same
objective as scikit-learn's default ``LogisticRegression`` (multinomial cross-entropy summed
over samples + ‖W‖²/(2C), unpenalised intercept) with L-BFGS in float64 on standardised
features, so the two agree to well within an accuracy point (tested).
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from .metrics import MetricError, _attrs


def fit_logistic(x: np.ndarray, y: np.ndarray, *, C: float = 1.0, max_iter: int = 100):
    """Multinomial L2 logistic regression; returns a predict function (numpy -> labels)."""
    classes = np.unique(y)
    if len(classes) < 2:
        raise MetricError("a linear probe needs at least 2 labels in its training split")
    mu = x.mean(0)
    sd = x.std(0)
    sd[sd == 0] = 1.0
    X = torch.from_numpy((x - mu) / sd).double()
    Y = torch.from_numpy(np.searchsorted(classes, y)).long()
    W = torch.zeros(X.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, tolerance_grad=1e-7, tolerance_change=1e-10,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(X @ W + b, Y, reduction="sum") + (W**2).sum() / (2 * C)
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a (n x d) solve gains nothing from threads and suffers badly from contention
    try:
        opt.step(closure)
    finally:
        torch.set_num_threads(threads)
    Wn, bn = W.detach().numpy(), b.detach().numpy()

    def predict(xn: np.ndarray) -> np.ndarray:
        return classes[(((xn - mu) / sd) @ Wn + bn).argmax(1)]

    return predict


def balanced_halves(group: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split positions into two halves stratified by group."""
    gen = np.random.default_rng([seed, 8100])
    a, b = [], []
    for g in np.unique(group):
        pos = gen.permutation(np.flatnonzero(group == g))
        h = len(pos) // 2
        a.append(pos[:h])
        b.append(pos[h:])
    return np.sort(np.concatenate(a)), np.sort(np.concatenate(b))


def feature_probe(acts: xr.DataArray, y, b, *, sample_dim: str, feature_dim: str, C: float = 1.0,
                  seed: int = 0) -> xr.Dataset:
    """Held-out error of a linear probe for y (core) and for b (spurious), for every index of the
    remaining dims of `acts` (e.g. each snapshot)."""
    y = np.asarray(y)
    b = np.asarray(b)
    group = y * (b.max() + 1) + b
    tr, te = balanced_halves(group, seed)
    a = acts.transpose(..., sample_dim, feature_dim)
    lead = a.dims[:-2]
    vals = a.values.reshape(-1, a.shape[-2], a.shape[-1]).astype(np.float64)
    errs = np.full((len(vals), 2), np.nan)
    for i, v in enumerate(vals):
        if not np.isfinite(v).all():
            continue
        for j, lab in enumerate((y, b)):
            pred = fit_logistic(v[tr], lab[tr], C=C)(v[te])
            errs[i, j] = float((pred != lab[te]).mean())
    shape = tuple(a.sizes[d] for d in lead)
    coords = {k: c for k, c in a.coords.items() if set(c.dims) <= set(lead)}
    return xr.Dataset({
        "core_probe_error": _attrs(xr.DataArray(errs[:, 0].reshape(shape), dims=lead, coords=coords),
                                   "linear-probe error for the core label", False),
        "spurious_probe_error": _attrs(xr.DataArray(errs[:, 1].reshape(shape), dims=lead, coords=coords),
                                       "linear-probe error for the spurious label", None),
    })
