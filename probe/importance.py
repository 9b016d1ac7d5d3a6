"""Importance weights through training, read from the minibatch log (Springer et al. §6, Fig. 5).

The importance weight of a training sample is λ = 1 − p(y | x): the scale of its cross-entropy
gradient with respect to its logits (σ(−y f(x)) in Springer et al.'s binary case). The training
loop logs, at every step, each minibatch sample's record from the forward pass it was trained
on (before that step's update): its logits (``log_logits="full"``) or its true-class
log-probability (``"summary"``). Every training sample is presented once per epoch, so each
epoch gives one importance weight per sample at no cost: the weight at the sample's last
presentation with a prediction in that epoch (the training loop presents it once; a hand-made
log that repeats it keeps the last). The epoch's vector mixes the weights of a network that
changed during the epoch, as the Dataset-Cartography record does (probe/dynamics.py).

Per epoch: the Gini coefficient of the weights over all samples, the bias-aligned and the
bias-conflicting ones, the bias-conflicting share of the total weight, the samples counted, and
Lorenz curves (the share of the total weight held by the top fraction of samples) at
``LORENZ_EPOCHS`` epochs spaced geometrically from the first to the last complete epoch.

Precision: from full logits (float16) 1 − p is computed as Σ_{j≠y} e^{z_j} / Σ_j e^{z_j} in
float64, from the summary as −expm1(log p) with log p stored in float32; both stay exact as
p → 1, where the weights of well-fit samples are tiny and decide the Gini coefficient late in
training.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from ..errors import StoreError
from .dynamics import BLOCK_ELEMS, SUBSETS, log_record, stream_log, unwrap_record
from .metrics import gini_np, lorenz_curve_np

LORENZ_EPOCHS = 6  # Lorenz curves kept per run, from the first to the last complete epoch
LORENZ_POINTS = 101


def weights_from_logits(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1 − p(y | x) of logits `z` (m, classes) and labels `y` (m,), float64, exact as p → 1;
    NaN where a logit is not finite (no prediction)."""
    z = np.asarray(z, dtype=np.float64)
    finite = np.isfinite(z).all(1)
    z = np.where(finite[:, None], z, 0.0)
    e = np.exp(z - z.max(1, keepdims=True))
    other = np.arange(z.shape[1]) != y[:, None]
    w = np.where(other, e, 0.0).sum(1) / e.sum(1)
    return np.where(finite, w, np.nan)


def lorenz_epochs(n_iterations: int, steps_per_epoch: int, k: int = LORENZ_EPOCHS) -> np.ndarray:
    """The `k` epochs whose Lorenz curves are kept: geometrically spaced from the first epoch to
    the last complete one (the first epoch when none is complete), in order; repeats where the
    run has fewer than `k` complete epochs to space them over."""
    complete = int(n_iterations) // max(1, int(steps_per_epoch))
    if complete < 1:
        return np.zeros(k, np.int64)
    return (np.round(np.geomspace(1, complete, k)) - 1).astype(np.int64)


class ImportanceTrajectory:
    """The streaming state of :func:`importance_trajectory`: the current epoch's weight per sample
    (NaN: no prediction yet in this epoch) and the finished epochs' statistics."""

    def __init__(self, y, n_train: int, steps_per_epoch: int, bias_conflicting=None, n_iterations: int = 0,
                 lorenz_at=None, points: int = LORENZ_POINTS):
        self.y = np.asarray(y).astype(np.int64)
        self.n = int(n_train)
        if self.y.shape != (self.n,):
            raise ValueError(f"y has shape {self.y.shape}, expected ({self.n},)")
        self.spe = max(1, int(steps_per_epoch))
        self.bc = np.zeros(self.n, bool) if bias_conflicting is None else np.asarray(bias_conflicting).astype(bool)
        self.n_epochs = -(-int(n_iterations) // self.spe)
        self.lorenz_at = (lorenz_epochs(n_iterations, self.spe) if lorenz_at is None
                          else np.asarray(lorenz_at, dtype=np.int64))
        self.points = points
        self.w = np.full(self.n, np.nan)
        self._stamp = np.zeros(self.n, np.int64)
        self.epoch = 0
        self.rows = 0
        self.stats: dict[int, dict] = {}
        self.curves: dict[int, np.ndarray] = {}

    def update(self, index, logits=None, *, true_logprob=None) -> None:
        """Fold in the next block of log rows: ``index`` (rows, slots), and ``logits`` (rows, slots,
        classes) or the summary's ``true_logprob`` (rows, slots)."""
        index = np.asarray(index)
        rows, slots = index.shape
        t0, self.rows = self.rows, self.rows + rows
        flat = index.reshape(-1)
        pos = np.flatnonzero(flat >= 0)
        s = flat[pos].astype(np.intp)
        if s.size and s.max() >= self.n:
            raise StoreError(f"batch_index holds sample id {int(s.max())} beyond the {self.n} training samples")
        if logits is not None:
            z = np.asarray(logits).reshape(rows * slots, -1)[pos]
            w = weights_from_logits(z, self.y[s])
        else:
            lp = np.asarray(true_logprob).reshape(-1)[pos].astype(np.float64)
            w = -np.expm1(lp)
        ep = (t0 + pos // slots) // self.spe  # sorted: presentations are in time order
        keep = np.isfinite(w)
        # epochs in order; an epoch of this block that starts later closes the current one
        for e in range(t0 // self.spe, (t0 + rows - 1) // self.spe + 1) if rows else ():
            while self.epoch < e:
                self._close()
            a, b = np.searchsorted(ep, [e, e + 1])
            m = keep[a:b]
            ss, ww = s[a:b][m], w[a:b][m]
            if not self._distinct(ss):  # a sample repeated (not by the training loop): its last presentation
                last = len(ss) - 1 - np.unique(ss[::-1], return_index=True)[1]
                ss, ww = ss[last], ww[last]
            self.w[ss] = ww

    def _distinct(self, s: np.ndarray) -> bool:
        """Whether no id repeats in `s`, in O(len(s)) (dynamics.DynamicsState._distinct)."""
        pos = np.arange(len(s))
        self._stamp[s] = pos
        return bool((self._stamp[s] == pos).all())

    def _close(self) -> None:
        """The statistics of the current epoch; the next one starts empty."""
        w, have = self.w, np.isfinite(self.w)
        masks = {"all": have, "bias_aligned": have & ~self.bc, "bias_conflicting": have & self.bc}
        st = {"samples": {k: int(m.sum()) for k, m in masks.items()},
              "gini": {k: float(gini_np(w[m])) if m.any() and w[m].sum() > 0 else np.nan for k, m in masks.items()}}
        tot = w[have].sum()
        st["bc_share"] = float(w[masks["bias_conflicting"]].sum() / tot) if tot > 0 else np.nan
        self.stats[self.epoch] = st
        if self.epoch in self.lorenz_at:
            self.curves[self.epoch] = (lorenz_curve_np(w[have], self.points) if have.any()
                                       else np.full(self.points, np.nan))
        self.w = np.full(self.n, np.nan)
        self.epoch += 1

    def result(self) -> dict[str, np.ndarray]:
        """Per epoch × subset: ``gini``, ``samples``; per epoch: ``bc_share``; per kept curve:
        ``lorenz`` (k, points) and ``lorenz_epoch`` (k,)."""
        n_ep = max(self.n_epochs, self.epoch + (1 if self.rows > self.epoch * self.spe else 0))
        while self.epoch < n_ep:
            self._close()
        gini = np.array([[self.stats[e]["gini"][k] for k in SUBSETS] for e in range(n_ep)]).reshape(n_ep, len(SUBSETS))
        samples = np.array([[self.stats[e]["samples"][k] for k in SUBSETS] for e in range(n_ep)],
                           dtype=np.int64).reshape(n_ep, len(SUBSETS))
        share = np.array([self.stats[e]["bc_share"] for e in range(n_ep)])
        nanc = np.full(self.points, np.nan)
        lorenz = np.stack([self.curves.get(int(e), nanc) for e in self.lorenz_at]) if len(self.lorenz_at) else \
            np.zeros((0, self.points))
        return {"gini": gini, "samples": samples, "bc_share": share, "lorenz": lorenz,
                "lorenz_epoch": self.lorenz_at.copy()}


def importance_trajectory(batch_index, y, n_train: int, *, steps_per_epoch: int | None = None,
                          bias_conflicting=None, batch_logits=None, batch_true_logprob=None, batch_correct=None,
                          block_rows: int | None = None, lorenz_at=None) -> dict[str, np.ndarray]:
    """Importance weights 1 − p(y | x) through training, per epoch, from the minibatch log:
    ``batch_index`` (iteration, batch_slot) and either ``batch_logits`` (full record) or
    ``batch_true_logprob`` (summary record; ``batch_correct`` is accepted and unused), numpy or
    dask, streamed one stored chunk at a time. Returns :meth:`ImportanceTrajectory.result`."""
    bi = unwrap_record(batch_index)
    if batch_logits is not None:
        rec = unwrap_record(batch_logits)
        per_slot = rec.shape[2]
    elif batch_true_logprob is not None:
        rec, per_slot = unwrap_record(batch_true_logprob), 1
    else:
        raise TypeError("importance_trajectory needs batch_logits or batch_true_logprob")
    if rec.shape[:2] != bi.shape:
        raise ValueError(f"batch_index {bi.shape} and the record {rec.shape} do not match")
    n_it, slots = bi.shape
    spe = steps_per_epoch or max(1, math.ceil(n_train / max(1, slots)))
    state = ImportanceTrajectory(y, n_train, spe, bias_conflicting, n_it, lorenz_at)
    rows = block_rows or max(1, BLOCK_ELEMS // max(1, slots * per_slot))
    for idx, r in stream_log([bi, rec], max(1, int(rows))):
        if batch_logits is not None:
            state.update(idx, r)
        else:
            state.update(idx, true_logprob=r)
    return state.result()


def epoch_importance(ds: xr.Dataset, *, block_rows: int | None = None) -> xr.Dataset:
    """The per-epoch part of the ``importance`` probe on a run Dataset (``lrscope.open_run``),
    from its minibatch log, full or summary record alike."""
    n = ds.sizes["train_sample"]
    slots = ds.sizes["batch_slot"]
    spe = max(1, math.ceil(n / max(1, slots)))
    rec = log_record(ds)
    r = importance_trajectory(ds.batch_index, ds.train_y.values, n, steps_per_epoch=spe,
                              bias_conflicting=ds.train_bias_conflicting.values.astype(bool), block_rows=block_rows,
                              batch_logits=rec.get("batch_logits"), batch_true_logprob=rec.get("batch_true_logprob"))
    n_ep = len(r["gini"])
    how = ("importance weight 1 - p(y|x) of each training sample at its presentation in the epoch's minibatches "
           "(logits before that step's update; Springer et al.)")
    out = xr.Dataset({
        "importance_epoch_gini": xr.DataArray(r["gini"], dims=("epoch", "subset"), attrs={
            "long_name": "importance Gini per epoch", "description": f"Gini coefficient of the {how}, over the "
            "samples with a prediction in the epoch: all, bias-aligned, bias-conflicting"}),
        "importance_epoch_samples": xr.DataArray(r["samples"], dims=("epoch", "subset"), attrs={
            "long_name": "samples weighted per epoch", "units": "count",
            "description": "training samples with a prediction in the epoch (all of them in a complete epoch)"}),
        "importance_epoch_bc_share": xr.DataArray(r["bc_share"], dims=("epoch",), attrs={
            "long_name": "bias-conflicting share of importance", "units": "fraction",
            "description": f"share of the total {how} held by the bias-conflicting samples"}),
        "importance_epoch_lorenz": xr.DataArray(r["lorenz"], dims=("lorenz_epoch_at", "fraction"), attrs={
            "long_name": "importance Lorenz curve per epoch", "units": "fraction",
            "description": f"share of the total {how} held by the top fraction of samples, at the epochs "
            "importance_lorenz_epoch (first to last complete, geometrically spaced)"}),
        "importance_lorenz_epoch": xr.DataArray(r["lorenz_epoch"], dims=("lorenz_epoch_at",), attrs={
            "long_name": "Lorenz-curve epoch", "description": "the epoch of each per-epoch Lorenz curve (0: the "
            "first; the last position: the last complete epoch; repeats when the run has fewer epochs)"}),
    }, coords={"epoch": np.arange(n_ep), "subset": list(SUBSETS),
               "fraction": np.linspace(0, 1, r["lorenz"].shape[1]),
               "lorenz_epoch_at": np.arange(len(r["lorenz_epoch"]))})
    out.attrs["steps_per_epoch"] = spe
    return out
