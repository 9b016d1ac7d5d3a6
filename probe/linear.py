"""Linear-probe feature quality (Springer et al. 2024, §3.1).

On a group-balanced set of frozen penultimate features, fit one logistic-regression probe for
the class label y (the core feature) and one for the bias label b (the spurious feature), and
report each probe's error on a held-out, group-stratified half. The solver minimises the same
objective as scikit-learn's default ``LogisticRegression`` in float64 on standardised features
(cross-entropy summed over samples + ‖W‖²/(2C), unpenalised intercept; binary for two labels,
multinomial for more), so the two agree to well within an accuracy point (tested).

Two labels and at most NEWTON_MAX_FEATURES features: Newton–Cholesky (scikit-learn's
``newton-cholesky``), the snapshots in batches of small (d+1)×(d+1) systems. Otherwise L-BFGS
(scipy's, as scikit-learn's ``lbfgs``) with an analytic gradient, one problem at a time.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from scipy.optimize import minimize

from .metrics import MetricError, _hint, annotate, as_labelled, label_vector, plain_names, resolve_dims

NEWTON_MAX_FEATURES = 512  # above this the (d+1)² Hessians cost more than L-BFGS's passes
NEWTON_BATCH = 32  # problems per batched Newton solve (bounds the memory of the Hessians)


def _standardise(xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = xs.mean(-2, keepdims=True)
    sd = xs.std(-2, keepdims=True)
    sd[sd == 0] = 1.0
    return mu, sd


def _newton_binary(X: torch.Tensor, t: torch.Tensor, C: float, max_iter: int, tol: float = 1e-4):
    """min_w,c Σ log(1+exp(-s·(Xw+c))) + ‖w‖²/(2C) for each of the P problems in X (P, n, d),
    targets t ∈ {0,1} (n,). Returns (P, d+1): weights then intercept.

    Stops, per problem, when max |gradient| ≤ tol·n: scikit-learn's criterion for its default
    tol = 1e-4 (its objective is ours divided by n). The objective and gradient are float64; the
    Hessians, which only choose the step direction, are built and factored in float32 (half the
    cost; Newton with an inexact Hessian still converges to the same optimum, and the backtracking
    keeps every step a decrease). Problems that have converged drop out of the solves."""
    P, n, d = X.shape
    Xa = torch.cat([X, X.new_ones(P, n, 1)], 2)
    X32 = Xa.float()
    reg = X.new_full((d + 1,), 1.0 / C)
    reg[-1] = 0.0  # unpenalised intercept
    ridge = torch.diag(reg + 1e-6).float()
    w = X.new_zeros(P, d + 1)

    def hessian(Xs, ps, ridge):  # Σ_i p_i(1 - p_i) x_i x_iᵀ + ridge, for each problem
        return torch.bmm(Xs.transpose(1, 2), Xs * (ps * (1 - ps)).unsqueeze(2)) + ridge

    def objective(w):
        z = torch.bmm(Xa, w.unsqueeze(2)).squeeze(2)
        return (torch.nn.functional.softplus(z) - t * z).sum(1) + 0.5 * (reg * w * w).sum(1), z

    f, z = objective(w)
    active = torch.ones(P, dtype=torch.bool)
    for _ in range(max_iter):
        p = torch.sigmoid(z)
        g = torch.bmm(Xa.transpose(1, 2), (p - t).unsqueeze(2)).squeeze(2) + reg * w
        active &= g.abs().amax(1) > tol * max(n, 1)
        if not active.any():
            break
        idx = active.nonzero().squeeze(1)
        step = torch.zeros_like(w)
        L, info = torch.linalg.cholesky_ex(hessian(X32[idx], p[idx].float(), ridge))
        step[idx] = torch.cholesky_solve(g[idx].float().unsqueeze(2), L).squeeze(2).double()
        bad = idx[info != 0]  # not positive definite in float32 (a tiny 1/C): these in float64
        if len(bad):
            L64 = torch.linalg.cholesky(hessian(Xa[bad], p[bad], torch.diag(reg + 1e-10)))
            step[bad] = torch.cholesky_solve(g[bad].unsqueeze(2), L64).squeeze(2)
        # backtracking: halve the step of any problem whose objective did not decrease
        scale = torch.ones(P, 1, dtype=X.dtype)
        for _ in range(30):
            w_new = w - scale * step
            f_new, z_new = objective(w_new)
            worse = f_new > f + 1e-12 * f.abs()
            if not worse.any():
                break
            scale[worse] /= 2
        keep = f_new <= f + 1e-12 * f.abs()
        w = torch.where(keep.unsqueeze(1), w_new, w)
        f = torch.where(keep, f_new, f)
        z = torch.where(keep.unsqueeze(1), z_new, z)
        active &= keep & ((scale * step).abs().amax(1) > 1e-12)
    return w


def _lbfgs(X: np.ndarray, yi: np.ndarray, k: int, C: float, max_iter: int):
    """min_W,b Σ CE(XW+b, y) + ‖W‖²/(2C) for one problem X (n, d); returns (W (d, k), b (k,)).
    Two labels: the binary problem (the first label's logit fixed at 0), as scikit-learn fits it."""
    n, d = X.shape
    free = 1 if k == 2 else k
    Y1 = np.zeros((n, k))
    Y1[np.arange(n), yi] = 1.0

    def logits(theta):
        Z = X @ theta[: d * free].reshape(d, free) + theta[d * free:]
        return np.concatenate([np.zeros((n, 1)), Z], 1) if free < k else Z

    def f(theta):
        W = theta[: d * free].reshape(d, free)
        Z = logits(theta)
        Z -= Z.max(1, keepdims=True)
        E = np.exp(Z)
        s = E.sum(1, keepdims=True)
        loss = float((np.log(s[:, 0]) - (Z * Y1).sum(1)).sum() + (W * W).sum() / (2 * C))
        R = (E / s - Y1)[:, k - free:]
        return loss, np.concatenate([(X.T @ R + W / C).ravel(), R.sum(0)])

    res = minimize(f, np.zeros(d * free + free), jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "gtol": 1e-6, "maxcor": 20})
    W = res.x[: d * free].reshape(d, free)
    b = res.x[d * free:]
    if free < k:
        W, b = np.concatenate([np.zeros((d, 1)), W], 1), np.concatenate([[0.0], b])
    return W, b


def fit_logistic_many(xs: np.ndarray, y: np.ndarray, *, C: float = 1.0, max_iter: int = 100):
    """Fit one probe per problem of xs (P, n, d) for the labels y (n,); returns a predict function
    taking (P, m, d) features to (P, m) labels."""
    y = np.asarray(y)
    classes = np.unique(y)
    if len(classes) < 2:
        raise MetricError("a linear probe needs at least 2 labels in its training split")
    xs = np.asarray(xs, dtype=np.float64)
    mu, sd = _standardise(xs)
    Xs = (xs - mu) / sd
    yi = np.searchsorted(classes, y)
    P, n, d = Xs.shape
    if len(classes) == 2 and d <= NEWTON_MAX_FEATURES:
        # binary logistic on the logit of the second label, as two columns (0, logit)
        t = torch.from_numpy(yi.astype(np.float64))
        wc = np.concatenate([_newton_binary(torch.from_numpy(Xs[i:i + NEWTON_BATCH]), t, C, max(1, max_iter)).numpy()
                             for i in range(0, P, NEWTON_BATCH)])
        W = np.stack([np.zeros((P, d)), wc[:, :d]], 2)
        b = np.stack([np.zeros(P), wc[:, d]], 1)
    else:
        fits = [_lbfgs(X, yi, len(classes), C, max_iter) for X in Xs]
        W = np.stack([w for w, _ in fits])
        b = np.stack([c for _, c in fits])

    def predict(xn: np.ndarray) -> np.ndarray:
        return classes[(((np.asarray(xn) - mu) / sd) @ W + b[:, None, :]).argmax(2)]

    return predict


def fit_logistic(x: np.ndarray, y: np.ndarray, *, C: float = 1.0, max_iter: int = 100):
    """Multinomial L2 logistic regression on x (n, d); returns a predict function (numpy -> labels)."""
    many = fit_logistic_many(np.asarray(x)[None], y, C=C, max_iter=max_iter)
    return lambda xn: many(np.asarray(xn)[None])[0]


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


def feature_probe_np(acts, y, b, *, C: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Numpy core of :func:`feature_probe`: acts (..., sample, feature), y and b (sample,);
    returns the core and spurious probe errors, each over the leading dims."""
    y = np.asarray(y)
    b = np.asarray(b)
    group = y * (b.max() + 1) + b
    tr, te = balanced_halves(group, seed)
    a = np.asarray(acts)
    lead = a.shape[:-2]
    vals = a.reshape(-1, a.shape[-2], a.shape[-1]).astype(np.float64)
    errs = np.full((len(vals), 2), np.nan)
    ok = np.isfinite(vals).all(axis=(1, 2))
    if ok.any():
        v = vals[ok]
        for j, lab in enumerate((y, b)):
            pred = fit_logistic_many(v[:, tr], lab[tr], C=C)(v[:, te])
            errs[ok, j] = (pred != lab[te]).mean(1)
    return errs[:, 0].reshape(lead), errs[:, 1].reshape(lead)


def feature_probe(acts, y, b, *, sample_dim: str | None = None, feature_dim: str | None = None, C: float = 1.0,
                  seed: int = 0) -> xr.Dataset:
    """Held-out error of a linear probe for y (core) and for b (spurious), for every index of the
    remaining dims of `acts` (e.g. each snapshot); the probes of all snapshots are fitted together.

    Parameters
    ----------
    acts : DataArray (..., sample, feature)
    y, b : array-like (sample,)
        Class and bias labels; the split into fitting and held-out halves is stratified by (y, b).
    sample_dim, feature_dim : str, optional
        Inferred when unambiguous (see :mod:`lrscope.probe.metrics`).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 20); b = np.tile([0, 1], 20)
    >>> acts = xr.DataArray(rng.normal(size=(40, 3)) + 3 * y[:, None], dims=["probe_sample", "neuron"])
    >>> float(feature_probe(acts, y, b).core_probe_error)   # y is linearly readable
    0.0
    """
    fn = "feature_probe"
    given = {"sample": sample_dim, "feature": feature_dim}
    acts = as_labelled(acts, fn, plain_names(given))
    d = resolve_dims(fn, acts, given, _hint(y, b))
    yv = label_vector(fn, y, acts, d["sample"], "y")
    bv = label_vector(fn, b, acts, d["sample"], "b")
    core, spurious = xr.apply_ufunc(feature_probe_np, acts, input_core_dims=[[d["sample"], d["feature"]]],
                                    output_core_dims=[[], []], kwargs={"y": yv, "b": bv, "C": C, "seed": seed},
                                    dask="allowed", keep_attrs=False)
    return xr.Dataset({
        "core_probe_error": annotate(core, "linear-probe error for the core label", False),
        "spurious_probe_error": annotate(spurious, "linear-probe error for the spurious label", None),
    })
