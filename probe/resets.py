"""Per-neuron attribution "resets" through training (Barsbey et al. supplement, Fig. 18 bottom):
how a penultimate neuron's use of the spurious input region changes from checkpoint to checkpoint,
next to how far that neuron's incoming weights moved in between.

For each stored checkpoint (up to `reset_checkpoints`, evenly spaced, first and last included) and
each of `reset_neurons` penultimate neurons — the most bias-selective ones at the last snapshot
(highest BSI), where spurious utilisation can be reset — the neuron's activation h_j(x) is
attributed to the input with Captum's InputXGradient on the group-balanced probe inputs, and its
**spurious attribution share** is Σ_spurious |a| / Σ_all |a| (averaged over inputs, as the
`attributions` probe's shares). Its **update norm** is ‖θ_j(k) − θ_j(k−1)‖₂ over the neuron's
incoming weights (the row of the last weight tensor before the head that produces it) between the
previous chosen checkpoint and this one. A **reset** is a fall of the spurious share by at least
`RESET_DROP` between consecutive chosen checkpoints. Resolution is the checkpoint interval
(`checkpoint_every`): the paper's per-update view needs checkpoints that close together.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from . import metrics as M

RESET_DROP = 0.2  # a fall of the spurious share by this much (absolute) between chosen checkpoints is a reset


def incoming_weights(model, n_features: int) -> str:
    """Name of the parameter whose rows are the penultimate neurons' incoming weights: the last
    weight tensor with more than one dimension, other than the head's, with `n_features` rows."""
    head = getattr(model, "head", None)
    skip = {id(p) for p in head.parameters()} if head is not None else set()
    names = [n for n, p in model.named_parameters()
             if p.ndim > 1 and p.shape[0] == n_features and id(p) not in skip and not n.startswith("head.")
             and not n.endswith("fc.weight") and not n.endswith("head.weight")]
    if not names:
        raise M.MetricError("no weight tensor with one row per penultimate neuron")
    return names[-1]


def probe_neuron_resets(ctx) -> xr.Dataset:
    import torch
    from captum.attr import InputXGradient

    from ..train.data import as_model_input
    from .attribution import region_shares
    from .context import require_bias

    ds = ctx.ds
    require_bias(ds)  # the neurons are chosen by BSI
    if "regions" not in ds or "spurious" not in [str(r) for r in ds.region.values]:
        raise M.MetricError("the dataset has no spurious input region to attribute to")
    n_ck = ds.sizes["checkpoint"]
    want = int(ctx.param("reset_checkpoints"))
    cks = sorted(set(np.linspace(0, n_ck - 1, min(want, n_ck)).round().astype(int).tolist()))
    if len(cks) < 2:
        raise M.MetricError("needs at least two checkpoints")
    sel = ctx.selective_features
    bsi = M.selectivity(sel.isel(snapshot=-1), ds.probe_b.values, name="bias", sample_dim="probe_sample",
                        feature_dim="neuron").values
    n_neurons = min(int(ctx.param("reset_neurons")), len(bsi))
    neurons = np.argsort(-np.nan_to_num(bsi, nan=-1.0), kind="stable")[:n_neurons]
    n = min(ds.sizes["probe_sample"], int(ctx.param("attr_samples")))
    pos = np.linspace(0, ds.sizes["probe_sample"] - 1, n).round().astype(int)
    x = as_model_input(torch.from_numpy(np.asarray(ds.probe_inputs.isel(probe_sample=pos).values)))
    in_dims = list(ds.probe_inputs.dims[1:])
    regions = ds.regions.load()
    spur = [str(r) for r in regions.region.values].index("spurious")
    share = np.full((len(cks), n_neurons), np.nan)
    update = np.full((len(cks), n_neurons), np.nan)
    prev = None
    pname = None
    for i, k in enumerate(cks):
        model = ctx.load_model(k).eval()
        if pname is None:
            pname = incoming_weights(model, sel.sizes["neuron"])
        w = dict(model.named_parameters())[pname].detach().reshape(sel.sizes["neuron"], -1)[neurons].double()
        if prev is not None:
            update[i] = (w - prev).norm(dim=1).numpy()
        prev = w
        ixg = InputXGradient(model.forward_features)
        for j, nj in enumerate(neurons):
            a = ixg.attribute(x.clone().requires_grad_(True), target=int(nj)).detach().numpy()
            da = xr.DataArray(a, dims=["attr_sample", *in_dims])
            share[i, j] = float(region_shares(da, regions, sample_dim="attr_sample").values[spur])
    drop = np.vstack([np.full((1, n_neurons), np.nan), share[:-1] - share[1:]])  # fall since the previous
    resets = drop >= RESET_DROP
    coords = {"reset_checkpoint": np.arange(len(cks)),
              "reset_checkpoint_position": ("reset_checkpoint", np.asarray(cks, dtype=np.int64)),
              "reset_iteration": ("reset_checkpoint", ds.checkpoint_iteration.values[cks]),
              "reset_neuron": np.arange(n_neurons), "reset_neuron_index": ("reset_neuron", neurons.astype(np.int64))}
    out = xr.Dataset(coords=coords)
    dims = ["reset_checkpoint", "reset_neuron"]
    out["neuron_spurious_share"] = M.annotate(
        xr.DataArray(share, dims=dims), "spurious attribution share of a neuron", False, units="fraction",
        description="Σ_spurious |InputXGradient| / Σ_all |InputXGradient| of the neuron's activation, mean over "
                    f"{n} probe inputs; the neurons are the {n_neurons} with the highest final BSI")
    out["neuron_update_norm"] = M.annotate(
        xr.DataArray(update, dims=dims), "update norm of a neuron's incoming weights", None,
        description=f"‖θ_j(k) − θ_j(previous chosen checkpoint)‖₂ over the rows of {pname}")
    out["neuron_resets"] = M.annotate(
        xr.DataArray(resets, dims=dims), "attribution reset", None,
        description=f"the spurious share fell by at least {RESET_DROP} since the previous chosen checkpoint")
    d, u = drop[1:].ravel(), update[1:].ravel()
    ok = np.isfinite(d) & np.isfinite(u)
    rho = np.nan
    if ok.sum() >= 3 and np.ptp(d[ok]) > 0 and np.ptp(u[ok]) > 0:
        from scipy import stats

        rho = float(stats.spearmanr(u[ok], d[ok]).statistic)
    out["reset_count"] = M.annotate(xr.DataArray(int(resets.sum())), "attribution resets (all chosen neurons)", None,
                                  description=f"falls of a neuron's spurious share by at least {RESET_DROP} between "
                                              "consecutive chosen checkpoints, counted over the chosen neurons",
                                  units="count")
    out["update_drop_correlation"] = M.annotate(
        xr.DataArray(rho), "Spearman ρ (update norm, fall of the spurious share)", None,
        description="over (neuron, consecutive chosen checkpoints): do larger updates go with larger falls?")
    return out
