"""Offline model selection over a sweep: would a practitioner *pick* the large learning rate
without group labels? Spurious-correlation benchmarks (Sagawa et al. 2020's Waterbirds/CelebA
protocol; Gulrajani & Lopez-Paz 2021, DomainBed; Koh et al. 2021, WILDS; Yang et al. 2023,
SubpopBench) choose a run and a stopping point on a validation split, with or without group
labels, and report the pick's test accuracy.

Two parts:

- `probe_selection` (the ``selection`` probe, per run, stored under ``probes/selection``): the
  criteria at every full snapshot, on the run's validation split (``val_logits``: the dataset's own
  or the share ``val_fraction`` held out of the training pool): worst-group accuracy (group labels),
  worst-class accuracy (class labels only), average accuracy (the plain accuracy of the validation
  split, which is distributed like the training data: the training-group-weighted accuracy); and on
  the test split the oracle's criterion (test worst-group accuracy) and the quantities a pick is
  judged by (test unbiased and worst-group accuracy), plus the number of classes predicted on the
  test split (1: a degenerate network that predicts one class everywhere).
- `selection_table(sw)` (`lrscope.selection_table`, the report's *Model selection* table): over the
  runs of a sweep (``lrscope.open_sweep``, which holds every run's probe results), for each
  criterion the (run, snapshot) it picks, that pick's test unbiased and worst-group accuracy, and its
  gap to the oracle's pick.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from .metrics import MetricError, annotate, group_accuracy_np

NO_VAL = "not defined: the run has no validation split"
NO_VAL_SWEEP = "not defined: no run of the sweep has a validation split"
NO_BIAS = "not defined: the data has no bias attribute"

# criterion -> (the per-snapshot variable it maximises, what it reads, needs group labels)
CRITERIA = {
    "oracle": ("selection_test_worst_group_accuracy", "test worst-group accuracy (uses the test labels: an upper "
               "bound, not a selection method)", True),
    "val_worst_group": ("val_worst_group_accuracy", "validation worst-group accuracy (group labels on the "
                        "validation split)", True),
    "val_worst_class": ("val_worst_class_accuracy", "validation worst-class accuracy (class labels only, no group "
                        "labels)", False),
    "val_average": ("val_average_accuracy", "validation average accuracy (no group labels; the validation split "
                    "is distributed like the training data)", False),
}


def _correct(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(snapshot, sample) 1.0 / 0.0 where the prediction is right / wrong, NaN without a prediction
    (non-finite logits), as `group_accuracy_np` counts them."""
    pred = np.where(np.isnan(logits), -np.inf, logits).argmax(-1)
    return np.where(np.isfinite(logits).all(-1), (pred == y).astype(np.float64), np.nan)


def worst_class_accuracy_np(logits, y) -> np.ndarray:
    """The lowest per-class accuracy (over the classes present in `y`) of logits (..., sample,
    class); NaN where a sample has no prediction.

    >>> worst_class_accuracy_np(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), np.array([0, 1, 1]))
    0.5
    """
    yv = np.asarray(y)
    if yv.size == 0:
        raise MetricError("accuracy of an empty sample set")
    c = _correct(np.asarray(logits, dtype=np.float64), yv)
    per = np.stack([c[..., yv == k].mean(-1) for k in np.unique(yv)], -1)
    return per.min(-1)


def probe_selection(ctx) -> xr.Dataset:
    """The selection criteria of one run per full snapshot (NaN at the light ones): on the
    validation split where the run has one, on the test split always."""
    from .context import evaluated_rows, has_bias, in_memory

    ds = ctx.ds
    bias = has_bias(ds)
    snaps = ds.snapshot.values
    out = xr.Dataset()
    not_defined = []

    def per_snapshot(values: np.ndarray, full: np.ndarray, long_name: str, description: str) -> xr.DataArray:
        v = np.full(len(snaps), np.nan)
        v[full] = values
        return annotate(xr.DataArray(v, dims=["snapshot"], coords={"snapshot": snaps}), long_name, True,
                      description=description, units="fraction")

    def at_full_snapshots(split: str):
        """(positions of the full snapshots, their float64 logits, y, b) of a split's stored logits."""
        lg = in_memory(ds[f"{split}_logits"])
        rows = evaluated_rows(lg, f"{split}_sample")
        return (rows, np.asarray(lg.isel(snapshot=rows).values, dtype=np.float64),
                ds[f"{split}_y"].values.astype(np.int64), ds[f"{split}_b"].values.astype(np.int64))

    full, logits, y, b = at_full_snapshots("test")
    if len(full):
        r = group_accuracy_np(logits, y, b)
        acc, worst = r["unbiased_accuracy"], r["worst_group_accuracy"]
        pred = np.where(np.isnan(logits), -np.inf, logits).argmax(-1)
        n_pred = np.array([len(np.unique(p)) if np.isfinite(lg).all() else np.nan for p, lg in zip(pred, logits)])
    else:
        acc = worst = n_pred = np.zeros(0)
    out["selection_test_unbiased_accuracy"] = per_snapshot(
        acc, full, "test unbiased accuracy (selection)", "accuracy on the test split at the snapshot (the paper's "
        "unbiased accuracy where y and b are independent there): what a selection's pick is judged by")
    if bias:
        out["selection_test_worst_group_accuracy"] = per_snapshot(
            worst, full, "test worst-group accuracy (selection)", "lowest (y, b)-group accuracy on the test split at "
            "the snapshot: the oracle's criterion and what a pick is judged by")
    else:
        not_defined.append(f"selection_test_worst_group_accuracy, val_worst_group_accuracy: {NO_BIAS}")
    npv = np.full(len(snaps), np.nan)
    npv[full] = n_pred
    out["predicted_classes"] = annotate(
        xr.DataArray(npv, dims=["snapshot"], coords={"snapshot": snaps}), "classes predicted (test split)", True,
        description="number of distinct classes the network predicts over the test split at the snapshot; 1: a "
                    "degenerate network that predicts one class everywhere; NaN at light snapshots",
        units="count")

    if "val_logits" in ds:
        vfull, vlog, vy, vb = at_full_snapshots("val")
        if len(vfull):
            vr = group_accuracy_np(vlog, vy, vb)
            vacc, vworst = vr["unbiased_accuracy"], vr["worst_group_accuracy"]
            vclass = worst_class_accuracy_np(vlog, vy)
        else:
            vacc = vworst = vclass = np.zeros(0)
        n_val = len(vy)
        if bias:
            out["val_worst_group_accuracy"] = per_snapshot(
                vworst, vfull, "validation worst-group accuracy", f"lowest (y, b)-group accuracy on the validation "
                f"split ({n_val} samples) at the snapshot: selection with group labels")
        out["val_worst_class_accuracy"] = per_snapshot(
            vclass, vfull, "validation worst-class accuracy", f"lowest per-class accuracy on the validation split "
            f"({n_val} samples) at the snapshot: selection without group labels")
        out["val_average_accuracy"] = per_snapshot(
            vacc, vfull, "validation average accuracy", f"accuracy on the validation split ({n_val} samples, "
            "distributed like the training data: the training-group-weighted 'average accuracy') at the snapshot: "
            "selection without group labels")
    else:
        not_defined.append(f"val_worst_group_accuracy, val_worst_class_accuracy, val_average_accuracy: {NO_VAL}")
    if not_defined:
        out.attrs["not_defined"] = "; ".join(not_defined)
    return out


def selection_table(sw: xr.Dataset) -> xr.Dataset:
    """For each selection criterion, the (run, snapshot) of the sweep `sw` (``lrscope.open_sweep``,
    with the ``selection`` probe computed: ``lrprobe compute``) whose value is highest, and that
    pick's test accuracies.

    The candidates are every full snapshot of every run (diverged runs included, up to their
    divergence: a snapshot without a prediction has no value); ties go to the first run in the
    sweep's order, then to the earliest snapshot. The criteria (dim ``criterion``):

    - ``oracle``: test worst-group accuracy (reads the test labels: the best any criterion can do);
    - ``val_worst_group``: validation worst-group accuracy (group labels on the validation split);
    - ``val_worst_class``: validation worst-class accuracy (no group labels);
    - ``val_average``: validation average accuracy (no group labels).

    Returns a Dataset over ``criterion``: ``selected_run`` (run id; "" where not defined),
    ``selected_lr``, ``selected_snapshot`` (position; -1), ``selected_iteration`` (-1),
    ``selection_score`` (the criterion's value at the pick), ``selected_test_unbiased_accuracy``,
    ``selected_test_worst_group_accuracy``, ``gap_to_oracle`` (the pick's test worst-group accuracy
    minus the oracle pick's: 0 for the oracle, ≤ 0 for the others), ``selected_degenerate`` (the
    pick predicts one class over the whole test split) and ``not_defined`` (why a criterion has no
    pick: "" where it has one). Attribute ``degenerate_runs``: the runs whose last snapshot predicts
    one class everywhere.

    Examples
    --------
    >>> t = lrscope.selection_table(lrscope.open_sweep("runs/"))
    >>> t.to_dataframe()[["selected_run", "selected_test_worst_group_accuracy", "gap_to_oracle"]]
    """
    if "run" not in sw.dims:
        raise MetricError("selection_table needs the Dataset of lrscope.open_sweep (no run dim)")
    if "selection_test_unbiased_accuracy" not in sw:
        raise MetricError("the sweep has no selection results: run lrprobe compute on it (the selection probe)")
    runs = [str(r) for r in sw.run.values]
    lrs = np.asarray(sw.lr.values, dtype=np.float64) if "lr" in sw.coords else np.full(len(runs), np.nan)
    it = np.asarray(sw.snapshot_iteration.values, dtype=np.float64)  # (run, snapshot), NaN past a run's end

    def grid(name: str) -> np.ndarray | None:
        return np.asarray(sw[name].transpose("run", "snapshot").values, dtype=np.float64) if name in sw else None

    test_acc = grid("selection_test_unbiased_accuracy")
    test_worst = grid("selection_test_worst_group_accuracy")
    n_pred = grid("predicted_classes")
    names = list(CRITERIA)
    rows = {k: [] for k in ("run", "lr", "snapshot", "iteration", "score", "acc", "worst", "degenerate", "why")}
    picks = {}
    for name in names:
        var, _, needs_groups = CRITERIA[name]
        values = grid(var)
        why = ""
        if values is None:
            if needs_groups and "selection_test_worst_group_accuracy" not in sw:
                why = NO_BIAS
            elif name != "oracle":
                why = NO_VAL_SWEEP
            else:
                why = NO_BIAS
        elif not np.isfinite(values).any():
            why = "not defined: no snapshot has a value (no full snapshot with a prediction)"
        if why:
            picks[name] = None
            for k, v in (("run", ""), ("lr", np.nan), ("snapshot", -1), ("iteration", -1), ("score", np.nan),
                         ("acc", np.nan), ("worst", np.nan), ("degenerate", False), ("why", why)):
                rows[k].append(v)
            continue
        flat = np.where(np.isfinite(values), values, -np.inf).reshape(-1)
        i, k = divmod(int(np.argmax(flat)), values.shape[1])  # the first maximum: run order, then snapshot
        picks[name] = (i, k)
        rows["run"].append(runs[i])
        rows["lr"].append(float(lrs[i]))
        rows["snapshot"].append(k)
        rows["iteration"].append(int(it[i, k]))
        rows["score"].append(float(values[i, k]))
        rows["acc"].append(float(test_acc[i, k]))
        rows["worst"].append(float(test_worst[i, k]) if test_worst is not None else np.nan)
        rows["degenerate"].append(bool(n_pred is not None and n_pred[i, k] == 1))
        rows["why"].append("")
    oracle = rows["worst"][names.index("oracle")]
    gap = [w - oracle if picks[n] is not None else np.nan for n, w in zip(names, rows["worst"])]
    crit = xr.DataArray(names, dims=["criterion"])
    described = xr.DataArray([CRITERIA[n][1] for n in names], dims=["criterion"])

    def col(v, long_name, description, units=None):
        return annotate(xr.DataArray(np.asarray(v), dims=["criterion"]), long_name, None, description=description,
                      **({"units": units} if units else {}))

    out = xr.Dataset({
        "selected_run": col(rows["run"], "selected run", "the run the criterion picks (\"\": not defined)"),
        "selected_lr": col(rows["lr"], "selected learning rate", "the configured learning rate of the picked run"),
        "selected_snapshot": col(np.asarray(rows["snapshot"], dtype=np.int64), "selected snapshot",
                                 "the picked snapshot's position in its run (-1: not defined)"),
        "selected_iteration": col(np.asarray(rows["iteration"], dtype=np.int64), "selected iteration",
                                  "training steps done at the picked snapshot (-1: not defined)", "iteration"),
        "selection_score": col(rows["score"], "criterion value", "the criterion's value at the pick (its "
                               "maximum over the sweep's full snapshots)", "fraction"),
        "selected_test_unbiased_accuracy": col(rows["acc"], "test unbiased accuracy of the pick",
                                               "accuracy on the test split at the picked snapshot", "fraction"),
        "selected_test_worst_group_accuracy": col(rows["worst"], "test worst-group accuracy of the pick",
                                                  "lowest (y, b)-group accuracy on the test split at the picked "
                                                  "snapshot", "fraction"),
        "gap_to_oracle": col(gap, "gap to the oracle", "the pick's test worst-group accuracy minus the oracle pick's "
                             "(0 for the oracle; the cost of selecting without test labels)", "fraction"),
        "selected_degenerate": col(np.asarray(rows["degenerate"], dtype=bool), "degenerate pick",
                                   "the picked network predicts one class over the whole test split"),
        "not_defined": col(rows["why"], "why not defined", "why the criterion has no pick (\"\": it has one)"),
    }, coords={"criterion": crit, "criterion_description": described})
    if n_pred is not None:
        last = np.array([row[np.isfinite(row)][-1] if np.isfinite(row).any() else np.nan for row in n_pred])
        degenerate = [r for r, n in zip(runs, last) if n == 1]
    else:
        degenerate = []
    out.attrs["degenerate_runs"] = ", ".join(degenerate)
    out.attrs["runs"] = len(runs)
    return out
