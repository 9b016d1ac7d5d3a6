"""Stalled runs: training accuracy flat, short of fitting the training set, for a long stretch,
while many penultimate units or inputs are dead.

This is lrscope's own diagnostic, not a quantity of either paper. It exists because a claim about a
learning rate is only as good as the runs behind it: at a large learning rate a seed can sit on a
plateau for thousands of steps with a quarter of its inputs mapped to an all-zero representation
(dead ReLUs), then recover - a run that ends at 100 % training accuracy like the others but whose
representation took a different road. `lrprobe ls`, the report and the explorer flag such runs the
way they flag runs that ended at max_steps.

Definitions (all recorded as attributes of the variables):

- The training-accuracy curve: the per-step minibatch accuracy (log/accuracy) averaged over
  consecutive blocks of one epoch (ceil(n_train / batch_size) steps), of at least MIN_BLOCK steps
  and BLOCK_SAMPLES samples (so that a block's sampling noise, about 0.5 / sqrt(BLOCK_SAMPLES) =
  0.007 for a constant predictor, sits well inside BAND).
- A plateau: a maximal stretch of consecutive blocks whose accuracies stay within BAND of each other
  (max - min <= BAND), with a mean below FITTED (not the converged end of training). The longest one
  gives plateau_steps, plateau_start and plateau_accuracy.
- Dead inputs at a snapshot: the fraction of probe-subset inputs whose non-negative penultimate
  representation is all zero; dead units: the fraction of penultimate units zero on every probe input.
- Stalled: a plateau of at least max(MIN_STEPS, LONG * the run's steps) steps with, at some snapshot
  inside it, dead inputs >= DEAD_INPUTS or dead units >= DEAD_UNITS.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import xarray as xr

from . import metrics as M

BAND = 0.05  # accuracy band of a plateau (fraction)
FITTED = 0.98  # a plateau whose mean accuracy is at least this is the fitted end, not a stall
MIN_BLOCK = 10  # steps per block at least
BLOCK_SAMPLES = 5000  # samples per block at least
MIN_STEPS = 1000  # a stall lasts at least this many steps ...
LONG = 0.2  # ... and at least this fraction of the run's steps
DEAD_INPUTS = 0.1  # fraction of probe inputs with an all-zero representation
DEAD_UNITS = 0.5  # fraction of penultimate units zero on every probe input

THRESHOLDS = {"band": BAND, "fitted": FITTED, "min_steps": MIN_STEPS, "long": LONG,
              "dead_inputs": DEAD_INPUTS, "dead_units": DEAD_UNITS}


def block_accuracy(acc: np.ndarray, block: int) -> np.ndarray:
    """Mean of `acc` over consecutive blocks of `block` steps (the last one may be shorter)."""
    n = len(acc)
    starts = np.arange(0, n, block)
    sums = np.add.reduceat(np.nan_to_num(acc), starts)
    counts = np.add.reduceat(np.isfinite(acc).astype(np.int64), starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def longest_plateau(blocks: np.ndarray, band: float = BAND, fitted: float = FITTED) -> tuple[int, int]:
    """(start, length) in blocks of the longest stretch of finite values within `band` of each other
    whose mean is below `fitted`; (0, 0) when there is none. Two pointers with monotone deques: O(n)."""
    best = (0, 0)
    lo_q: deque[int] = deque()
    hi_q: deque[int] = deque()
    start = 0
    csum = np.concatenate([[0.0], np.cumsum(np.nan_to_num(blocks))])

    def consider(s: int, e: int) -> None:  # the stretch [s, e)
        nonlocal best
        if e - s > best[1] and (csum[e] - csum[s]) / (e - s) < fitted:
            best = (s, e - s)

    for i, v in enumerate(blocks):
        if not math.isfinite(v):  # a gap (a diverged stretch, no steps): no plateau spans it
            consider(start, i)
            lo_q.clear(), hi_q.clear()
            start = i + 1
            continue
        while lo_q and blocks[lo_q[-1]] >= v:
            lo_q.pop()
        lo_q.append(i)
        while hi_q and blocks[hi_q[-1]] <= v:
            hi_q.pop()
        hi_q.append(i)
        while blocks[hi_q[0]] - blocks[lo_q[0]] > band:
            consider(start, i)
            start += 1
            while lo_q[0] < start:
                lo_q.popleft()
            while hi_q[0] < start:
                hi_q.popleft()
    consider(start, len(blocks))
    return best


def dead_fractions(features: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """(dead inputs, dead units) per snapshot of a non-negative (snapshot, probe_sample, neuron)
    representation: the fraction of inputs whose vector is all zero, of units zero on every input."""
    zero = features == 0
    inputs = zero.all("neuron").mean("probe_sample")
    units = zero.all("probe_sample").mean("neuron")
    return (M.annotate(inputs.astype("float64"), "dead inputs", False, units="fraction",
                     description="fraction of probe-subset inputs whose non-negative penultimate representation "
                                 "is all zero (every unit inactive)"),
            M.annotate(units.astype("float64"), "dead units", False, units="fraction",
                     description="fraction of penultimate units that are zero on every probe-subset input"))


def stall(acc: np.ndarray, batch_size: int, n_train: int, snap_iter: np.ndarray, dead_in: np.ndarray,
          dead_units: np.ndarray) -> dict:
    """The plateau and the stall flag of one run from its per-step accuracy and the dead fractions
    at its snapshots (taken after `snap_iter` steps)."""
    batch_size = max(batch_size, 1)
    block = max(MIN_BLOCK, -(-BLOCK_SAMPLES // batch_size), -(-n_train // batch_size))
    steps = len(acc)
    start_b, length_b = longest_plateau(block_accuracy(acc, block)) if steps else (0, 0)
    start, end = start_b * block, min(steps, (start_b + length_b) * block)
    length = end - start
    plateau_acc = float(np.nanmean(acc[start:end])) if length else math.nan
    inside = (snap_iter >= start) & (snap_iter <= end)
    dead = bool(length) and bool(((dead_in[inside] >= DEAD_INPUTS) | (dead_units[inside] >= DEAD_UNITS)).any())
    long = length >= max(MIN_STEPS, LONG * steps)
    return {"block": block, "start": start, "length": length, "accuracy": plateau_acc,
            "dead_in": float(np.max(dead_in[inside])) if inside.any() else math.nan,
            "stalled": bool(long and dead)}


def probe_stall(ctx) -> xr.Dataset:
    """The `stall` probe (declared in probe/probes/stall.py): see the module docstring."""
    from .context import in_memory

    ds = ctx.ds
    if ds.sizes.get("iteration", 0) == 0:
        raise M.MetricError("no training step is committed yet")
    acc = in_memory(ds["accuracy"]).values.astype(np.float64)
    dead_in, dead_units = dead_fractions(ctx.selective_features)
    snap_iter = ds["snapshot_iteration"].values.astype(np.float64)
    cfg = ds.attrs["config"]
    s = stall(acc, int(cfg["batch_size"]), ds.sizes["train_sample"], snap_iter, dead_in.values, dead_units.values)
    common = dict(block_steps=s["block"], **THRESHOLDS)
    out = xr.Dataset({
        "dead_input_fraction": dead_in, "dead_unit_fraction": dead_units,
        "plateau_steps": M.annotate(xr.DataArray(s["length"]), "longest training-accuracy plateau", False,
                                    units="steps",
                                  description="the longest stretch of epoch-averaged minibatch accuracy within "
                                              f"{BAND:g} of itself, its mean below {FITTED:g}", **common),
        "plateau_start": M.annotate(xr.DataArray(s["start"]), "plateau start", None, units="steps",
                                  description="the iteration the longest plateau starts at"),
        "plateau_accuracy": M.annotate(xr.DataArray(s["accuracy"]), "plateau training accuracy", None, units="fraction",
                                     description="mean minibatch accuracy over the longest plateau"),
        "plateau_dead_input_fraction": M.annotate(
            xr.DataArray(s["dead_in"]), "dead inputs on the plateau", False, units="fraction",
            description="the largest dead-input fraction at a snapshot inside the longest plateau"),
        "stalled": M.annotate(xr.DataArray(s["stalled"]), "stalled run", False, **common,
                            description=f"the longest plateau lasts at least max({MIN_STEPS}, {LONG:g} x the run's "
                                        f"steps) and at a snapshot inside it at least {DEAD_INPUTS:g} of the probe "
                                        f"inputs or {DEAD_UNITS:g} of the units are dead (lrscope's diagnostic, not "
                                        "a quantity of the papers)"),
    })
    return out.drop_vars([c for c in out.coords if c != "snapshot"])
