"""The importance probe: importance weights 1 - p(y | x) of the training samples through
training (probe/importance.py streams the log)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..declare import probe

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
)
def probe_importance(ctx: Context) -> xr.Dataset:
    """Importance weights 1 - p(y|x) of the training samples (Springer et al.): per epoch from the
    minibatch log (probe/importance.py: Gini over all / bias-aligned / bias-conflicting samples,
    the bias-conflicting share, Lorenz curves at epochs from the first to the last complete one),
    and per snapshot from the stored train logits where the train split was evaluated (its Gini,
    and Lorenz curves at the first and the last such snapshot)."""
    import numpy as np
    import xarray as xr

    from ...store import schema as S
    from .. import metrics as M
    from ..context import has_bias, without_bias
    from ..importance import epoch_importance

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
            out[v].attrs = dict(S.DESCRIPTIONS[v])
    out = out.merge(epoch_importance(ds), combine_attrs="override")
    if not has_bias(ds):  # the subsets' bias-aligned is every sample, bias-conflicting none
        out = without_bias(out, ds, ("importance_epoch_bc_share",))
        out.attrs["not_defined"] += " (subset: bias-aligned is every sample, bias-conflicting none)"
    return out
