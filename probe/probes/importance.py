"""The importance probe: importance weights 1 - p(y | x) of the training samples through
training (probe/importance.py streams the log)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..declare import probe, var

if TYPE_CHECKING:
    import xarray as xr

    from ..context import Context


@probe(
    "importance",
    "Importance weights of the training samples (Springer et al.: 1 - p(y | x), each sample's share of "
    "the cross-entropy gradient) through training: per epoch from the minibatch log (full or summary "
    "record), their Gini coefficient over all, bias-aligned and bias-conflicting samples, the "
    "bias-conflicting share of the total, and Lorenz curves from the first to the last complete epoch; "
    "per snapshot from the stored train logits where the train split was evaluated (Gini, and Lorenz "
    "curves at the first and the last such snapshot).",
    format=4,  # the per-epoch trajectory from the minibatch log (was the snapshot train logits only)
    cost="streams the log's record once and reads the stored train logits (~0.05x)",
    samples="every training sample, at its presentation in each epoch's minibatches (and the whole training "
    "split at snapshots with train logits)",
    variables={
        "importance_gini": var("importance Gini (snapshot train logits)", "Gini coefficient of the per-sample "
                               "importance weights 1 − p(y|x) on the training split, from the train logits stored at "
                               "snapshots where the train split was evaluated (Springer et al.); NaN at the others"),
        "importance_lorenz": var("importance Lorenz curve (snapshot train logits)", "share of the total importance "
                                 "weight held by the top fraction of training samples, from the stored train logits "
                                 "at the first and the last snapshot that has them", "fraction"),
        "lorenz_snapshot": var("Lorenz-curve snapshot", "snapshot position each Lorenz curve was taken at"),
        "importance_epoch_gini": var("importance Gini per epoch", "Gini coefficient of the importance weights 1 − "
                                     "p(y|x) of the training samples at their presentation in the epoch's minibatches "
                                     "(minibatch log), over all, the bias-aligned and the bias-conflicting samples "
                                     "(Springer et al.)"),
        "importance_epoch_samples": var("samples weighted per epoch", "training samples with a prediction in the "
                                        "epoch's minibatches, per subset", "count"),
        "importance_epoch_bc_share": var("bias-conflicting share of importance", "share of the epoch's total "
                                         "importance weight 1 − p(y|x) held by the bias-conflicting training samples",
                                         "fraction"),
        "importance_epoch_lorenz": var("importance Lorenz curve per epoch", "share of the epoch's total importance "
                                       "weight held by the top fraction of training samples (minibatch log), at the "
                                       "epochs importance_lorenz_epoch", "fraction"),
        "importance_lorenz_epoch": var("Lorenz-curve epoch", "epoch of each per-epoch Lorenz curve: the first to the "
                                       "last complete one, geometrically spaced (repeats when the run has fewer "
                                       "epochs)"),
        "lorenz_epoch_at": var("per-epoch Lorenz curve", "position of a per-epoch Lorenz curve (0: the first epoch, "
                               "the last: the last complete epoch; which epochs: importance_lorenz_epoch)"),
    },
)
def probe_importance(ctx: Context) -> xr.Dataset:
    """Importance weights 1 - p(y|x) of the training samples (Springer et al.): per epoch from the
    minibatch log (probe/importance.py: Gini over all / bias-aligned / bias-conflicting samples,
    the bias-conflicting share, Lorenz curves at epochs from the first to the last complete one),
    and per snapshot from the stored train logits where the train split was evaluated (its Gini,
    and Lorenz curves at the first and the last such snapshot)."""
    import numpy as np
    import xarray as xr

    from .. import metrics as M
    from ..context import has_bias, without_bias
    from ..importance import epoch_importance
    from ..registry import PROBES

    ds = ctx.ds
    tl = ds.train_logits.compute()
    has = tl.notnull().all(("train_sample", "class"))
    w = M.importance_weights(tl, ds.train_y)
    g = M.gini(w.fillna(0), sample_dim="train_sample").where(has)
    last = int(np.flatnonzero(has.values)[-1]) if has.any() else -1
    out = xr.Dataset({"importance_gini": g})
    if last >= 0:
        first = int(np.flatnonzero(has.values)[0])
        lz = M.lorenz_curve(w.isel(snapshot=[first, last]), sample_dim="train_sample")
        # lorenz_at 0 / 1: the first / last snapshot with train logits (the same one when only the
        # final snapshot has them); which snapshots they are is in lorenz_snapshot
        out["importance_lorenz"] = lz.rename(snapshot="lorenz_at").assign_coords(lorenz_at=[0, 1])
        out["lorenz_snapshot"] = xr.DataArray([first, last], dims=["lorenz_at"])
    out = out.drop_vars([c for c in out.coords if c not in ("snapshot", "fraction", "lorenz_at")])
    for v in ("importance_gini", "importance_lorenz"):  # labelled with what they are computed from
        if v in out:
            out[v].attrs = dict(PROBES["importance"].variables[v])
    out = out.merge(epoch_importance(ds), combine_attrs="override")
    if not has_bias(ds):  # the subsets' bias-aligned is every sample, bias-conflicting none
        out = without_bias(out, ds, ("importance_epoch_bc_share",))
        out.attrs["not_defined"] += " (subset: bias-aligned is every sample, bias-conflicting none)"
    return out
