"""The probes of the penultimate representation: compressibility (activations and weights),
selectivity (representation) and linear probes (feature_quality)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..declare import Headline, param, probe, var

if TYPE_CHECKING:
    import xarray as xr

    from ..context import Context


@probe(
    "compressibility",
    "(q, kappa)-compressibility, sparsity and PQ-index of the probe subset's penultimate activations per "
    "snapshot (sparsity of the non-negative representation: max(0, h) for Swin-T), and of the last "
    "checkpoint's weights with more than one dimension (linear and convolution weights, as Diao et al. "
    "compute the PQ-index; biases and normalisation parameters left out), together and per tensor.",
    format=4,  # parameters: weight tensors with > 1 dimension only; sparsity on the non-negative representation
    cost="reads the stored activations and the last checkpoint (~0.03x)",
    samples="the probe subset (group-balanced test samples, --probe-size at training, default 1000)",
    headline=(Headline("activation_compressibility_final", "activation compressibility"),),
    params={"kappa": param(0.1, "the κ of the (q, κ)-compressibility", lo=0, hi=1),
            "q": param(2, "the q of the (q, κ)-compressibility", kind=float, lo=1, lo_open=True)},
    variables={
        "activation_compressibility": var("activation compressibility", "(q, κ)-compressibility of each probe "
                                          "sample's penultimate activations (relative error of keeping the largest κ "
                                          "share), mean over the probe subset; q and kappa in attrs"),
        "activation_sparsity": var("activation sparsity", "fraction of penultimate activations that are zero, mean "
                                   "over the probe subset", "fraction"),
        "activation_pq_index": var("activation PQ-index", "PQ-index (p = 1, q = 2) of each probe sample's penultimate "
                                   "activations, mean over the probe subset (higher: sparser)"),
        "param_compressibility": var("parameter compressibility", "(q, κ)-compressibility of all weights together at "
                                     "the last checkpoint"),
        "param_pq_index": var("parameter PQ-index", "PQ-index (p = 1, q = 2) of all weights together at the last "
                              "checkpoint"),
        "param_sparsity": var("parameter sparsity", "fraction of weights within 1e-8 of zero at the last checkpoint",
                              "fraction"),
        "layer_param_compressibility": var("parameter compressibility per layer", "(q, κ)-compressibility of each "
                                           "parameter tensor at the last checkpoint (names: layer_name)"),
        "layer_param_pq_index": var("parameter PQ-index per layer", "PQ-index of each parameter tensor at the last "
                                    "checkpoint (names: layer_name)"),
    },
)
def probe_compressibility(ctx: Context) -> xr.Dataset:
    import json

    import numpy as np
    import xarray as xr

    from .. import metrics as M
    from ..context import final_value

    f = ctx.features
    q, k = ctx.param("q"), ctx.param("kappa")
    comp = M.compressibility(f, feature_dim="neuron", q=q, kappa=k).mean("probe_sample")
    spar = M.sparsity(ctx.selective_features, feature_dim="neuron").mean("probe_sample")
    pq = M.pq_index(f, feature_dim="neuron").mean("probe_sample")
    out = xr.Dataset({
        "activation_compressibility": M.annotate(comp, f"activation ({q:g}, {k:g})-compressibility", True),
        "activation_sparsity": M.annotate(spar, "activation sparsity", True,
                                        representation=ctx.selective_features.attrs["representation"]),
        "activation_pq_index": M.annotate(pq, "activation PQ-index", True),
    })
    # parameters, as Diao et al. (2023) compute the PQ-index: the weight tensors with more than one
    # dimension (linear and convolution weights) of the last checkpoint; biases and normalisation
    # scales/shifts are left out. Globally over all of them, and per tensor.
    named = [(n, w.reshape(-1)) for n, w in ctx.weights]
    pda = xr.DataArray(np.concatenate([w for _, w in named]), dims=["weight"])
    out["param_compressibility"] = M.compressibility(pda, feature_dim="weight", q=q, kappa=k)
    out["param_pq_index"] = M.pq_index(pda, feature_dim="weight")
    out["param_sparsity"] = M.sparsity(pda, feature_dim="weight", tol=1e-8)
    # per layer (one value per parameter tensor, in state-dict order; names in attrs)
    per = [float(M.compressibility(xr.DataArray(w, dims=["weight"]), feature_dim="weight", q=q, kappa=k))
           for _, w in named]
    out["layer_param_compressibility"] = M.annotate(
        xr.DataArray(per, dims=["layer"]), f"parameter ({q:g}, {k:g})-compressibility per layer", True,
        layers=json.dumps([n for n, _ in named]))
    out["layer_param_pq_index"] = M.annotate(
        xr.DataArray([float(M.pq_index(xr.DataArray(w, dims=["weight"]), feature_dim="weight")) for _, w in named],
                     dims=["layer"]), "parameter PQ-index per layer", True)
    for v in ("activation_compressibility", "activation_sparsity", "activation_pq_index"):
        out[f"{v}_final"] = final_value(out[v], v)
    return out.drop_vars([c for c in out.coords if c not in ("snapshot",)])


@probe(
    "representation",
    "Class and bias selectivity of every penultimate neuron on the probe subset (CSI, BSI, in [0, 1]: "
    "computed on the non-negative representation, the post-ReLU activations, or max(0, h) for Swin-T whose "
    "features are signed) and their averages, class separation R² of the activations, and neuron survival "
    "(Fig. 18: the share of class- and bias-dominant neurons that keep their role until the end), per snapshot.",
    format=4,  # CSI/BSI on max(0, h) for models with signed features (Swin-T)
    cost="reads the stored activations (~0.01x)",
    samples="the probe subset",
    headline=(Headline("csi_mean_final", "average CSI", "CSI"),
    Headline("class_separation_final", "class separation R²")),
    variables={
        "csi": var("class selectivity index", "CSI of each penultimate neuron on the probe subset: selectivity with "
                   "coverage for the class label y (Barsbey et al. §3.3)"),
        "bsi": var("bias selectivity index", "BSI of each penultimate neuron: selectivity for the bias label b"),
        "csi_mean": var("average CSI", "mean CSI over the penultimate neurons: core-feature utilisation"),
        "bsi_mean": var("average BSI", "mean BSI over the penultimate neurons: spurious-feature utilisation"),
        "class_separation": var("class separation R²", "R² class separation of the penultimate activations of the "
                                "probe subset (Kornblith et al.)"),
        "class_dominant_fraction": var("class-dominant neurons", "fraction of penultimate neurons whose CSI exceeds "
                                       "their BSI", "fraction"),
        "class_neuron_survival": var("class-dominant survival", "fraction of the snapshot's class-dominant neurons "
                                     "that are still class-dominant at the final snapshot", "fraction"),
        "bias_neuron_survival": var("bias-dominant survival", "fraction of the snapshot's bias-dominant neurons that "
                                    "are still bias-dominant at the final snapshot", "fraction"),
    },
)
def probe_representation(ctx: Context) -> xr.Dataset:
    import xarray as xr

    from .. import metrics as M
    from ..context import final_value, without_bias

    ds = ctx.ds
    f = ctx.features
    kw = dict(sample_dim="probe_sample", feature_dim="neuron")
    csi, bsi = ctx.selectivity  # on the non-negative representation
    out = xr.Dataset({
        "csi": csi,
        "bsi": bsi,
        "csi_mean": M.annotate(csi.mean("neuron"), "average CSI (core-feature utilisation)", True),
        "bsi_mean": M.annotate(bsi.mean("neuron"), "average BSI (spurious-feature utilisation)", False),
        "class_separation": M.class_separation(f, ds.probe_y.values, **kw),
    })
    out = out.merge(M.neuron_survival(csi, bsi))
    for v in ("csi_mean", "bsi_mean", "class_separation"):
        out[f"{v}_final"] = final_value(out[v], v)
    out = out.drop_vars([c for c in out.coords if c not in ("snapshot",)])
    # BSI and what compares CSI with it (class- vs bias-dominant neurons): not without a bias attribute
    return without_bias(out, ds, ("bsi", "bsi_mean", "class_dominant_fraction", "class_neuron_survival",
                                  "bias_neuron_survival"))


@probe(
    "feature_quality",
    "Linear probes (Springer et al.): held-out error of a logistic regression for the class (core) and "
    "for the bias label (spurious) on the probe subset's penultimate activations, every snapshot "
    "(fitting and held-out halves stratified by group).",
    format=4,  # two-label probes fit scikit-learn's binary objective (was the 2-class multinomial)
    cost="two small fits per snapshot (~0.04x on the demo sweep, ~0.013x of the CNN run)",
    samples="the probe subset: fitted on one half, the error measured on the other (halves stratified by group)",
    variables={
        "core_probe_error": var("core linear-probe error", "error of a logistic-regression probe for the class y on "
                                "the penultimate activations (Springer et al.)", "fraction"),
        "spurious_probe_error": var("spurious linear-probe error", "error of a logistic-regression probe for the bias "
                                    "label b on the penultimate activations", "fraction"),
    },
)
def probe_feature_quality(ctx: Context) -> xr.Dataset:
    from ..context import final_value, without_bias
    from ..linear import feature_probe

    ds = ctx.ds
    out = feature_probe(ctx.features, ds.probe_y.values, ds.probe_b.values,
                        sample_dim="probe_sample", feature_dim="neuron")
    for v in ("core_probe_error", "spurious_probe_error"):
        out[f"{v}_final"] = final_value(out[v], v)
    out = out.drop_vars([c for c in out.coords if c not in ("snapshot",)])
    return without_bias(out, ds, ("spurious_probe_error",))
