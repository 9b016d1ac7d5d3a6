"""A plugin probe: the mean logit margin of the probe subset per snapshot, from the stored logits
(no network run), over all and over the bias-conflicting samples."""

from __future__ import annotations

from lrscope.probe.registry import Headline, ProbeEntry

LOGIT_MARGIN = ProbeEntry(
    "logit_margin", "own_model.probes:probe_logit_margin",
    "Mean margin of the true-class logit over the best other class on the probe subset, per snapshot, "
    "over all samples and over the bias-conflicting ones (a plugin probe: own_model).",
    cost="reads the stored probe logits",
    samples="the probe subset, every snapshot",
    headline=(Headline("logit_margin_final", "mean logit margin (probe subset)"),),
)


def probe_logit_margin(ctx):
    import numpy as np
    import xarray as xr

    ds = ctx.ds
    z = np.asarray(ds.probe_logits.values, dtype=np.float64)  # (snapshot, probe_sample, class)
    y = ds.probe_y.values
    true = np.take_along_axis(z, y[None, :, None], -1)[..., 0]
    other = np.where(np.arange(z.shape[-1])[None, None, :] == y[None, :, None], -np.inf, z).max(-1)
    margin = true - other
    bc = ds.probe_y.values != ds.probe_b.values
    out = xr.Dataset({
        "logit_margin": xr.DataArray(margin.mean(1), dims=["snapshot"],
                                     attrs={"long_name": "mean logit margin (probe subset)", "units": "logit"}),
        "logit_margin_bc": xr.DataArray(margin[:, bc].mean(1) if bc.any() else np.full(len(z), np.nan),
                                        dims=["snapshot"],
                                        attrs={"long_name": "mean logit margin, bias-conflicting probe samples",
                                               "units": "logit"}),
    })
    out["logit_margin_final"] = out.logit_margin.isel(snapshot=-1, drop=True).assign_attrs(
        long_name="mean logit margin (probe subset, final)", units="logit")
    return out
