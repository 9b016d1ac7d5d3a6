"""The accuracy and loss_ratio probes: what the stored logits and the minibatch log say about
accuracy and the bias-conflicting samples' share of the loss."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..declare import Headline, probe, var

if TYPE_CHECKING:
    import xarray as xr

    from ..context import Context


@probe(
    "accuracy",
    "Unbiased (the paper's: accuracy on the test split, where y and b are independent), worst-group, "
    "per-group, bias-aligned and bias-conflicting accuracy per snapshot, and the 'average accuracy' of "
    "Waterbirds/CelebA papers (test group accuracies weighted by the training groups' sizes): on the test "
    "split at full snapshots, on the group-balanced probe subset at every snapshot; train accuracy where "
    "train logits were recorded. *final_value: the last snapshot's.",
    format=4,  # average_accuracy added
    cost="reads the stored logits (~0.01x of training on the demo sweep)",
    samples="the whole test split (full snapshots), the group-balanced probe subset (every snapshot), the "
    "training split (where train logits were recorded)",
    headline=(Headline("unbiased_accuracy_final", "unbiased test accuracy", "unb.acc"),
    Headline("worst_group_accuracy_final", "worst-group accuracy", "worst"),
    Headline("average_accuracy_final", "average accuracy (training-group weighted)")),
    variables={
        "unbiased_accuracy": var("unbiased test accuracy", "accuracy on the test split, whose bias is uncorrelated "
                                 "with the class (y ⟂ b), at full snapshots; NaN at light ones", "fraction"),
        "worst_group_accuracy": var("worst-group accuracy", "lowest accuracy over the (y, b) groups of the test split",
                                    "fraction"),
        "group_accuracy": var("group accuracy", "test accuracy per (y, b) group", "fraction"),
        "bc_accuracy": var("bias-conflicting accuracy", "test accuracy on the bias-conflicting samples (b ≠ y)",
                           "fraction"),
        "ba_accuracy": var("bias-aligned accuracy", "test accuracy on the bias-aligned samples (b = y)", "fraction"),
        "probe_accuracy": var("probe-subset accuracy", "accuracy on the group-balanced probe subset, at every snapshot",
                              "fraction"),
        "probe_worst_group_accuracy": var("probe-subset worst-group accuracy", "lowest (y, b) group accuracy on the "
                                          "probe subset, at every snapshot", "fraction"),
        "train_accuracy": var("train accuracy", "accuracy on the whole training split where it was evaluated",
                              "fraction"),
    },
)
def probe_accuracy(ctx: Context) -> xr.Dataset:
    """Unbiased, worst-group, per-group, BA/BC accuracy per snapshot (test split at full
    snapshots; the group-balanced probe subset at every snapshot), train accuracy."""

    from .. import metrics as M
    from ..context import NO_BIAS, evaluated_rows, final_value, has_bias, in_memory, without_bias

    ds = ctx.ds
    test_logits = in_memory(ds.test_logits)
    full = evaluated_rows(test_logits, "test_sample")
    out = M.group_accuracy(test_logits.isel(snapshot=full), ds.test_y, ds.test_b, sample_dim="test_sample")
    # computed before reindexing: a lazy reindex splits every chunk (dask PerformanceWarning)
    out = out.compute().reindex(snapshot=ds.snapshot.values)  # NaN at light snapshots
    out["average_accuracy"] = _train_weighted(out.group_accuracy, ds)
    pr = M.group_accuracy(in_memory(ds.probe_logits), ds.probe_y, ds.probe_b, sample_dim="probe_sample")
    out["probe_accuracy"] = M.annotate(pr.unbiased_accuracy, "accuracy on the group-balanced probe subset", True)
    out["probe_worst_group_accuracy"] = M.annotate(pr.worst_group_accuracy, "worst-group accuracy (probe subset)", True)
    tl = in_memory(ds.train_logits)
    tr = evaluated_rows(tl, "train_sample")
    out["train_accuracy"] = M.annotate(M.group_accuracy(tl.isel(snapshot=tr), ds.train_y, ds.train_y,
                                                      sample_dim="train_sample").unbiased_accuracy
                                     .compute().reindex(snapshot=ds.snapshot.values), "train accuracy", True)
    out["train_loss"] = M.annotate(M.per_sample_ce(tl.isel(snapshot=tr), ds.train_y, sample_dim="train_sample")
                                 .mean("train_sample").compute().reindex(snapshot=ds.snapshot.values),
                                 "training loss (whole training set)", False, units="nats",
                                 description="mean cross-entropy of the stored train logits (the whole training set, "
                                             "at the snapshots where it was evaluated; always the final one)")
    for v in ("unbiased_accuracy", "worst_group_accuracy", "average_accuracy", "bc_accuracy", "ba_accuracy",
              "train_accuracy", "train_loss"):
        if v in out:
            out[f"{v}_final"] = final_value(out[v], v)
    out = out.drop_vars([c for c in out.coords if c not in ("snapshot", "group")])
    if not has_bias(ds):  # the test accuracy stands; groups of a placeholder b do not
        out = without_bias(out, ds, ("group_accuracy", "worst_group_accuracy", "average_accuracy", "bc_accuracy",
                                     "ba_accuracy", "probe_worst_group_accuracy"))
        out = out.drop_dims("group", errors="ignore")
        for v in ("unbiased_accuracy", "unbiased_accuracy_final"):
            out[v].attrs["note"] = f"{NO_BIAS}: the plain accuracy on the test split"
    return out


def _train_weighted(group_acc: xr.DataArray, ds: xr.Dataset) -> xr.DataArray:
    """The "average accuracy" of the Waterbirds/CelebA literature (e.g. Sagawa et al. 2020, Liu
    et al. 2021): the test accuracy of each (y, b) group weighted by that group's share of the
    *training* set, i.e. the accuracy expected on test data distributed like the (biased) training
    data. Not the paper's unbiased accuracy (every group weighted equally on the y ⟂ b test set)."""
    import numpy as np
    import xarray as xr

    from .. import metrics as M

    n_b = int(ds.test_b.values.max()) + 1  # the numbering group_accuracy gave the test groups
    groups = ds.train_y.values.astype(np.int64) * n_b + ds.train_b.values.astype(np.int64)
    counts = np.bincount(groups, minlength=int(group_acc.group.max()) + 1)[group_acc.group.values]
    w = xr.DataArray(counts / counts.sum(), dims=["group"], coords={"group": group_acc.group.values})
    return M.annotate((group_acc * w).sum("group", skipna=False), "average accuracy (training-group weighted)", True,
                    description="test accuracy of each (y, b) group weighted by the group's share of the training "
                                "set (the 'average accuracy' of Waterbirds/CelebA papers); the paper's unbiased "
                                "accuracy weights the groups equally", units="fraction")


@probe(
    "loss_ratio",
    "The bias-conflicting / bias-aligned loss ratio of every minibatch, read from the per-step log; its "
    "maximum over training (max_loss_ratio, over single minibatches as in the paper's Fig. 12) and the "
    "maximum of its epoch running mean; the BA/BC loss ratio of the stored train logits per snapshot.",
    format=4,  # max_loss_ratio is the per-minibatch maximum (was the epoch running mean's)
    cost="reads the log (~0.01x)",
    samples="every training minibatch (the log), and the whole training split at snapshots with train logits",
    variables={
        "loss_ratio": var("BC loss ratio", "bias-conflicting share of the step's minibatch loss: Σ BC losses / Σ all "
                          "losses (Barsbey et al. Fig. 12)", "fraction"),
        "max_loss_ratio": var("max BC loss ratio", "maximum over training of a single minibatch's BC loss ratio (the "
                              "paper's Fig. 12 quantity)", "fraction"),
        "max_loss_ratio_smoothed": var("max smoothed BC loss ratio", "maximum over training of the BC loss ratio's "
                                       "running mean over one epoch of steps", "fraction"),
        "ba_bc_loss_ratio": var("BA/BC loss ratio", "mean bias-aligned loss / mean bias-conflicting loss on the "
                                "training split, at snapshots with train logits"),
    },
)
def probe_loss_ratio(ctx: Context) -> xr.Dataset:
    import xarray as xr

    from .. import metrics as M
    from ..context import evaluated_rows, require_bias

    ds = ctx.ds
    require_bias(ds)  # bias-conflicting over bias-aligned: nothing conflicts with a placeholder b = y
    if ds.sizes.get("iteration", 0) == 0:
        raise M.MetricError("no training step is committed yet")
    r = M.loss_ratio(ds.bc_loss_sum, ds.ba_loss_sum).compute()
    out = xr.Dataset({"loss_ratio": r})
    # the headline maximum is the paper's: over single minibatches (Fig. 12). The maximum of the
    # epoch running mean is kept beside it: it sits near the same value at every learning rate
    # (docs/replication.md), the per-minibatch maximum tracks unbiased accuracy.
    n_train = ds.sizes["train_sample"]
    window = max(1, -(-n_train // int(ds.attrs["config"]["batch_size"])))
    smooth = r.rolling(iteration=window, min_periods=1).mean()
    out["max_loss_ratio"] = M.annotate(r.max("iteration", skipna=True),
                                     "maximum BC loss ratio of a minibatch over training", None)
    out["max_loss_ratio_smoothed"] = M.annotate(smooth.max("iteration", skipna=True),
                                              "maximum BC loss ratio over training (epoch running mean)", None,
                                              window=window)
    tr = evaluated_rows(ds.train_logits, "train_sample")
    bc = ds.train_bias_conflicting.values
    if len(tr) and bc.any() and (~bc).any():
        ratio = M.ba_bc_loss_ratio(ds.train_logits.isel(snapshot=tr), ds.train_y, ds.train_bias_conflicting,
                                   sample_dim="train_sample")
        out["ba_bc_loss_ratio"] = ratio.compute().reindex(snapshot=ds.snapshot.values)
    out = out.drop_vars([c for c in out.coords if c not in ("iteration", "snapshot")])
    return out
