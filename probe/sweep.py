"""Analyses across the runs of a sweep (the Dataset from ``lrscope.open_sweep``)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..store import schema as S
from ..store.reader import last_snapshot  # noqa: F401  (the one last_snapshot: probe.last_snapshot is lrscope's)
from .metrics import MetricError, annotate


def lr_sensitive_samples(sw: xr.Dataset, *, low_lrs, high_lrs, high_frac: float = 0.75,
                         low_frac: float = 0.25, split: str = "test") -> xr.Dataset:
    """Samples predicted correctly by more than `high_frac` of the high-LR runs and by fewer than
    `low_frac` of the low-LR runs at the end of training (Barsbey et al. Fig. 8's selection).

    `split` = "test" (default): the whole test split, from the test logits stored at each run's
    final snapshot; ``in_probe_subset`` / ``probe_position`` say which selected samples are in
    the probe subset (the inputs whose attribution maps the `attributions` probe stores).
    `split` = "probe": the group-balanced probe subset only (its logits at the last snapshot)."""
    if split not in ("test", "probe"):
        raise MetricError(f"split must be 'test' or 'probe', got {split!r}")
    dim = f"{split}_sample"
    logits = last_snapshot(sw[f"{split}_logits"])
    finite = np.isfinite(logits).all("class")
    correct = (logits.fillna(-np.inf).argmax("class") == sw[f"{split}_y"]).where(finite).astype(float)
    ok = sw.status == S.STATUS_COMPLETED  # completed runs only: a diverged run's end predicts nothing
    hi = correct.where(ok & sw.lr.isin(list(high_lrs)), drop=True)
    lo = correct.where(ok & sw.lr.isin(list(low_lrs)), drop=True)
    if hi.sizes.get("run", 0) == 0 or lo.sizes.get("run", 0) == 0:
        raise MetricError("need completed runs at both the low and the high learning rates")
    frac_hi, frac_lo = hi.mean("run").compute(), lo.mean("run").compute()
    selected = ((frac_hi > high_frac) & (frac_lo < low_frac)).values
    out = xr.Dataset({
        "high_lr_correct": annotate(frac_hi, f"share of the high-LR runs ({', '.join(map(str, high_lrs))}) right",
                                    None),
        "low_lr_correct": annotate(frac_lo, f"share of the low-LR runs ({', '.join(map(str, low_lrs))}) right", None),
        "selected": annotate(xr.DataArray(selected, dims=[dim]), "right at high LR, wrong at low LR (Fig. 8)", None),
    })
    if split == "test":
        pos = np.full(sw.sizes["test_sample"], -1, dtype=np.int64)
        pos[sw.probe_test_index.values.astype(np.int64)] = np.arange(sw.sizes["probe_sample"])
        out["probe_position"] = annotate(xr.DataArray(pos, dims=[dim]), "position in the probe subset (-1: not in it)",
                                       None)
        out["in_probe_subset"] = xr.DataArray(pos >= 0, dims=[dim])
    return out


def loss_ratio_correlation(sw: xr.Dataset, variable: str = "max_loss_ratio") -> xr.Dataset:
    """Pearson correlation, over completed runs, of the maximum bias-conflicting loss ratio with
    unbiased test accuracy (Barsbey et al. Fig. 12). `variable`: the per-minibatch maximum
    (the paper's), or ``max_loss_ratio_smoothed`` (the epoch running mean's)."""
    from scipy import stats

    ok = (sw.status == S.STATUS_COMPLETED).values
    x = sw[variable].values[ok].astype(float)
    y = sw.unbiased_accuracy_final.values[ok].astype(float)
    m = np.isfinite(x) & np.isfinite(y)
    if m.sum() < 3 or np.std(x[m]) == 0 or np.std(y[m]) == 0:
        raise MetricError("the correlation needs at least 3 completed runs with varying values")
    r, p = stats.pearsonr(x[m], y[m])
    return xr.Dataset({"pearson_r": annotate(xr.DataArray(r), "Pearson r (max BC loss ratio, unbiased accuracy)", None),
                       "p_value": xr.DataArray(p), "n_runs": xr.DataArray(int(m.sum()))})
