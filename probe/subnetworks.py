"""Proposition 2 of Barsbey et al. (supplement D.2), measured: the gradient-norm ratio between the
subnetwork that uses spurious features and the one that uses core features, through training.

The proposition idealises the network as f = f_c + f_s + f_r (core, spurious and remainder
subnetworks) and shows that while it predicts by the spurious rule, Σ‖∇_s ℓ‖ / Σ‖∇_c ℓ‖ grows
like e^{αk} with the logit scale k. On a real network we need a concrete split. We take the one
the paper itself uses for its neurons (Fig. 18): a penultimate neuron is **class-dominant** when
its CSI exceeds its BSI, **bias-dominant** otherwise; f_c is the head reading the class-dominant
neurons, f_s the head reading the bias-dominant ones. For the head W (logits = W h (+ bias)), the
per-sample cross-entropy gradient is ∇_W ℓ = (π − e_y) hᵀ, so the Frobenius norm of its columns S
is exactly ‖π − e_y‖₂ · ‖h_S‖₂: the ratio is computed from the stored probe logits and
activations of every snapshot, without running the network. Restricting the subnetworks to the
head is our choice (the paper leaves the split abstract); it says so in the variables' attrs.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from . import metrics as M

SPLIT = ("head columns reading the bias-dominant (spurious) vs the class-dominant (core) penultimate neurons; "
         "dominance: CSI > BSI at the same snapshot (Fig. 18's rule)")


def subnetwork_grad_norms_np(logits, feats, y, spurious) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample head-gradient norms of the two subnetworks: logits (..., sample, class), feats
    (..., sample, neuron), y (sample,), spurious (..., neuron) bool. Returns (spurious, core),
    each (..., sample): ‖π − e_y‖₂ · ‖h_S‖₂ and ‖π − e_y‖₂ · ‖h_C‖₂."""
    with np.errstate(invalid="ignore", over="ignore"):  # a diverged snapshot's logits: NaN, not a warning
        z = np.asarray(logits, dtype=np.float64)
        z = z - z.max(-1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(-1, keepdims=True)
    p[..., np.arange(p.shape[-2]), np.asarray(y)] -= 1.0  # π − e_y
    g = np.sqrt((p ** 2).sum(-1))
    with np.errstate(invalid="ignore", over="ignore"):
        h2 = np.asarray(feats, dtype=np.float64) ** 2
    s = np.asarray(spurious)[..., None, :]
    return g * np.sqrt((h2 * s).sum(-1)), g * np.sqrt((h2 * ~s).sum(-1))


def probe_subnetwork_gradients(ctx) -> xr.Dataset:
    from .runner import _final, require_bias

    ds = ctx.ds
    require_bias(ds)  # the subnetworks are split by CSI against BSI
    y, b = ds.probe_y.values, ds.probe_b.values
    csi, bsi = (v.transpose("snapshot", "neuron").values for v in ctx.selectivity)
    spurious = ~(csi > bsi)  # bias-dominant: CSI <= BSI (NaN at a diverged snapshot: not class-dominant)
    logits = ds.probe_logits.transpose("snapshot", "probe_sample", "class").values
    feats = ctx.features.transpose("snapshot", "probe_sample", "neuron").values
    gs, gc = subnetwork_grad_norms_np(logits, feats, y, spurious)
    bc = y != b
    out = xr.Dataset(coords={"snapshot": ds.snapshot.values})

    def ratio(mask):
        with np.errstate(invalid="ignore", divide="ignore"):
            num, den = gs[:, mask].sum(-1), gc[:, mask].sum(-1)
            return np.where(den > 0, num / np.where(den > 0, den, 1), np.where(num > 0, np.inf, np.nan))

    desc = ("Σ over probe samples of the spurious subnetwork's gradient norm over the same sum for the core "
            "subnetwork (Prop. 2, Eq. 8); subnetworks: " + SPLIT)
    out["spurious_core_grad_ratio"] = M._attrs(
        xr.DataArray(ratio(np.ones_like(bc)), dims=["snapshot"]), "spurious / core subnetwork gradient-norm ratio",
        None, description=desc + "; all probe samples", units="ratio")
    if bc.any():
        out["spurious_core_grad_ratio_bc"] = M._attrs(
            xr.DataArray(ratio(bc), dims=["snapshot"]),
            "spurious / core subnetwork gradient-norm ratio (bias-conflicting samples)", None,
            description=desc + "; bias-conflicting probe samples only", units="ratio")
    out["bias_dominant_fraction"] = M._attrs(
        xr.DataArray(spurious.mean(-1), dims=["snapshot"]), "share of bias-dominant penultimate neurons", None,
        description="neurons with CSI <= BSI at the snapshot")
    for v in ("spurious_core_grad_ratio", "spurious_core_grad_ratio_bc"):
        if v in out:
            out[f"{v}_final"] = _final(out[v], v)
    return out
