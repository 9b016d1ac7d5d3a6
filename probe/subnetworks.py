"""Proposition 2 of Barsbey et al. (ICCV 2025, supplement D.2), measured: the gradient-norm ratio
between the subnetwork that uses spurious features and the one that uses core features.

Two probes live here.

``prop2_gradients`` is the proposition as stated: Σ_{Ω} ‖∇_s ℓ‖ / Σ_{Ω} ‖∇_c ℓ‖ (Eq. 8) over a
*training minibatch* Ω = Ω_bc ∪ Ω_ba — the recorded minibatch of the step that starts at a
checkpoint, recomputed from that checkpoint's weights — with the per-sample gradients of the loss
with respect to every parameter that belongs to one penultimate unit only: the unit's incoming
weights (the rows of the last weight tensor before the head that produce it, and that layer's
per-unit biases/normalisation parameters) and the head's column reading it. Units are split at
the snapshot at or before the checkpoint: **core** (class-dominant, CSI > BSI), **spurious**
(bias-dominant, BSI ≥ CSI > 0 or BSI > 0) and **dead** (never active on the probe subset:
CSI = BSI = 0), each its own category. Parameters shared by all units (earlier layers, the head's
bias) are the remainder f_r of Definition 1. The sums are kept for bias-aligned and
bias-conflicting samples apart, with the minibatch's mean logit norm ‖z‖ beside them, so the
dependence on logit scale — the point of the proposition (the ratio grows like e^{αk} with the
logit scale k while the network predicts by the spurious rule, Definition 1's core gradient
vanishing on bias-conflicting samples) — is visible. Per-sample gradients are taken with the
network in eval mode (BatchNorm's running statistics: a sample's gradient does not depend on its
minibatch), through torch.func (vmap of grad).

``subnetwork_gradients`` (the earlier, cheaper measurement, kept under names that say what it is:
``head_column_grad_ratio``) restricts the subnetworks to the head's columns and evaluates them on
the group-balanced probe subset of the test split at every snapshot:

The proposition idealises the network as f = f_c + f_s + f_r (core, spurious and remainder
subnetworks) and shows that while it predicts by the spurious rule, Σ‖∇_s ℓ‖ / Σ‖∇_c ℓ‖ grows
like e^{αk} with the logit scale k. On a real network we need a concrete split. We take the one
the paper itself uses for its neurons (Fig. 18): a penultimate neuron is **class-dominant** when
its CSI exceeds its BSI, **bias-dominant** otherwise; f_c is the head reading the class-dominant
neurons, f_s the head reading the bias-dominant ones. For the head W (logits = W h (+ bias)), the
per-sample cross-entropy gradient is ∇_W ℓ = (π − e_y) hᵀ, so the Frobenius norm of its columns S
is exactly ‖π − e_y‖₂ · ‖h_S‖₂ and the softmax factor cancels in a sample's ratio: per sample it
is the activation-norm ratio ‖h_S‖/‖h_C‖, which is why it cannot show the proposition's growth
with logit scale. It is computed from the stored probe logits and activations of every snapshot,
without running the network.
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
    from .context import final_value, require_bias

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

    desc = ("Σ over probe samples of the head columns' gradient norm for the bias-dominant neurons over the same "
            "sum for the class-dominant ones (per sample this is ‖h_S‖/‖h_C‖: not Prop. 2's quantity, which is "
            "prop2_grad_ratio); subnetworks: " + SPLIT)
    out["head_column_grad_ratio"] = M.annotate(
        xr.DataArray(ratio(np.ones_like(bc)), dims=["snapshot"]),
        "spurious / core head-column gradient-norm ratio (probe subset)", None,
        description=desc + "; all probe samples", units="ratio")
    if bc.any():
        out["head_column_grad_ratio_bc"] = M.annotate(
            xr.DataArray(ratio(bc), dims=["snapshot"]),
            "spurious / core head-column gradient-norm ratio (probe subset, bias-conflicting)", None,
            description=desc + "; bias-conflicting probe samples only", units="ratio")
    out["bias_dominant_fraction"] = M.annotate(
        xr.DataArray(spurious.mean(-1), dims=["snapshot"]), "share of bias-dominant penultimate neurons", None,
        description="neurons with CSI <= BSI at the snapshot")
    for v in ("head_column_grad_ratio", "head_column_grad_ratio_bc"):
        if v in out:
            out[f"{v}_final"] = final_value(out[v], v)
    return out


# ------------------------------------------------------------------------------- Prop. 2 as stated
UNIT_KINDS = ("core", "spurious", "dead")
PARTS = ("bias-aligned", "bias-conflicting")


def unit_parameters(model, n_features: int) -> dict[str, int]:
    """The parameters that belong to one penultimate unit each, by name, with the axis that runs
    over the units: the head's weight (axis 1: the column reading unit j), the incoming weight
    tensor producing the units (axis 0: its row j; `resets.incoming_weights`) and the per-unit
    1-D parameters that follow it before the head (that layer's bias, a normalisation's scale and
    shift). Everything else is shared by all units (Definition 1's remainder f_r)."""
    from .resets import incoming_weights

    head = getattr(model, "head", None)
    if head is None or not hasattr(head, "weight") or head.weight.ndim != 2 or head.weight.shape[1] != n_features:
        raise M.MetricError("the network has no linear head reading the penultimate units")
    named = list(model.named_parameters())
    name_of = {id(p): n for n, p in named}
    inc = incoming_weights(model, n_features)
    out = {name_of[id(head.weight)]: 1, inc: 0}
    order = [n for n, _ in named]
    for n, p in named[order.index(inc) + 1:]:
        if p is head.weight or (head.bias is not None and p is head.bias) or p.ndim > 1:
            break
        if p.shape[0] == n_features:
            out[n] = 0
    return out


def unit_grad_sq(model, x, y, params: dict[str, int], chunk: int = 32):
    """Per-sample, per-unit squared gradient norms of the cross-entropy loss with respect to the
    unit parameters `params` (`unit_parameters`): (samples, units), float64; and the logits. The
    model runs in eval mode; torch.func's vmap of grad, or one autograd pass per sample where an
    operation does not vmap."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, vmap

    model = model.eval()
    full = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    sub = {n: full[n] for n in params}

    def reduce(g: dict) -> torch.Tensor:  # {name: (B, *shape)} -> (B, units)
        tot = 0
        for n, axis in params.items():
            t = g[n].double() ** 2
            t = t.movedim(axis + 1, 1).reshape(t.shape[0], t.shape[axis + 1], -1).sum(-1)
            tot = tot + t
        return tot

    def loss(sub_p, xi, yi):
        out = functional_call(model, ({**full, **sub_p}, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    with torch.no_grad():
        logits = model(x)
    try:
        g = vmap(grad(loss), in_dims=(None, 0, 0), chunk_size=chunk)(sub, x, y)
        return reduce(g), logits
    except (RuntimeError, NotImplementedError):  # an operation without a batching rule
        return per_sample_unit_grad_sq(model, x, y, params), logits


def per_sample_unit_grad_sq(model, x, y, params: dict[str, int]):
    """`unit_grad_sq` by one autograd backward pass per sample (the reference, and the fallback)."""
    import torch
    import torch.nn.functional as F

    model = model.eval()
    named = dict(model.named_parameters())
    rows = []
    for i in range(len(y)):
        ps = [named[n] for n in params]
        gs = torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), ps)
        tot = 0
        for g, axis in zip(gs, params.values()):
            t = g.double() ** 2
            tot = tot + t.movedim(axis, 0).reshape(t.shape[axis], -1).sum(-1)
        rows.append(tot)
    return torch.stack(rows)


def unit_kinds(csi: np.ndarray, bsi: np.ndarray) -> np.ndarray:
    """0 core (CSI > BSI), 1 spurious (BSI ≥ CSI, not dead), 2 dead (CSI = BSI = 0, or undefined:
    never active on the probe subset) for each unit."""
    c, b = np.nan_to_num(csi, nan=0.0), np.nan_to_num(bsi, nan=0.0)
    return np.where((c == 0) & (b == 0), 2, np.where(c > b, 0, 1))


def probe_prop2_gradients(ctx) -> xr.Dataset:
    import torch

    from ..train.data import as_model_input
    from .context import final_value, require_bias

    ds = ctx.ds
    require_bias(ds)  # the units are split by CSI against BSI; BA/BC need a bias label
    n_it = ds.sizes.get("iteration", 0)
    if n_it == 0:
        raise M.MetricError("no training step is committed yet")
    bundle = ctx.bundle
    if bundle is None or len(bundle.train) != ds.sizes["train_sample"]:
        raise M.MetricError("needs the training inputs: the dataset cannot be rebuilt here (--data-root?)")
    n_ck = ds.sizes["checkpoint"]
    want = int(ctx.param("prop2_checkpoints"))
    cks = sorted(set(np.linspace(0, n_ck - 1, min(want, n_ck)).round().astype(int).tolist()))
    csi, bsi = (v.transpose("snapshot", "neuron").values for v in ctx.selectivity)
    n_feat = csi.shape[1]
    snap_it = ds.snapshot_iteration.values
    ck_it = ds.checkpoint_iteration.values
    bi = ds.batch_index
    y_all, b_all = ds.train_y.values, ds.train_b.values
    sums = np.full((len(cks), 3, 2), np.nan)
    units = np.zeros((len(cks), 3), dtype=np.int64)
    logit_norm = np.full((len(cks), 2), np.nan)
    mb_it = np.zeros(len(cks), dtype=np.int64)
    split_it = np.zeros(len(cks), dtype=np.int64)
    params = None
    dev = ctx.torch_device
    for i, k in enumerate(cks):
        it = int(ck_it[k])
        step = min(it, n_it - 1)  # the minibatch trained from this checkpoint (the last one at the end)
        ids = np.asarray(bi.isel(iteration=step).values)
        ids = ids[ids >= 0]
        s = int(np.searchsorted(snap_it, it, side="right")) - 1
        if s < 0 or not len(ids):
            continue
        mb_it[i], split_it[i] = step, int(snap_it[s])
        kinds = unit_kinds(csi[s], bsi[s])
        units[i] = np.bincount(kinds, minlength=3)
        model = ctx.load_model(k).to(dev)
        if params is None:
            params = unit_parameters(model, n_feat)
        x = as_model_input(bundle.train.x[torch.from_numpy(ids.astype(np.int64))]).to(dev)
        yt = torch.from_numpy(y_all[ids].astype(np.int64)).to(dev)
        sq, logits = unit_grad_sq(model, x, yt, params)
        sq, logits = sq.cpu().numpy(), logits.double().cpu().numpy()
        norms = np.stack([np.sqrt(sq[:, kinds == kk].sum(1)) for kk in range(3)], 1)  # (samples, kind)
        bc = y_all[ids] != b_all[ids]
        zn = np.linalg.norm(logits, axis=1)
        for pi, mask in enumerate((~bc, bc)):
            sums[i, :, pi] = norms[mask].sum(0) if mask.any() else np.nan
            logit_norm[i, pi] = zn[mask].mean() if mask.any() else np.nan

    def ratio(num, den):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1), np.where(num > 0, np.inf, np.nan))

    tot = np.nansum(sums, axis=2)  # all of Ω (a part absent from a minibatch adds nothing)
    coords = {"prop2_checkpoint": np.arange(len(cks)),
              "prop2_iteration": ("prop2_checkpoint", ck_it[cks].astype(np.int64)),
              "prop2_minibatch_iteration": ("prop2_checkpoint", mb_it),
              "prop2_split_iteration": ("prop2_checkpoint", split_it),
              "subnetwork": list(UNIT_KINDS), "minibatch_part": list(PARTS)}
    out = xr.Dataset(coords=coords)
    where = ("over the recorded training minibatch of the step taken from each checkpoint, recomputed from the "
             "checkpoint's weights (eval mode)")
    split = ("subnetworks: each penultimate unit's incoming weights and the head column reading it; core: CSI > BSI, "
             "spurious: BSI ≥ CSI, dead: CSI = BSI = 0 (at the last snapshot at or before the checkpoint)")
    out["prop2_grad_norm_sum"] = M.annotate(
        xr.DataArray(sums, dims=["prop2_checkpoint", "subnetwork", "minibatch_part"]),
        "Σ per-sample gradient norm of a subnetwork", None, units="gradient norm",
        description=f"Σ_i ‖∇_S ℓ(y_i, f(x_i))‖ (Frobenius) {where}; {split}")
    for name, sel, what in (("prop2_grad_ratio", None, "Ω"), ("prop2_grad_ratio_bc", 1, "Ω_bc"),
                            ("prop2_grad_ratio_ba", 0, "Ω_ba")):
        num, den = (tot[:, 1], tot[:, 0]) if sel is None else (sums[:, 1, sel], sums[:, 0, sel])
        out[name] = M.annotate(
            xr.DataArray(ratio(num, den), dims=["prop2_checkpoint"]),
            f"spurious / core subnetwork gradient-norm ratio over {what} (Prop. 2)", None, units="ratio",
            description=f"Σ_{what} ‖∇_s ℓ‖ / Σ_{what} ‖∇_c ℓ‖ (Barsbey et al. 2025, supplement Eq. 8) {where}; {split}")
    out["prop2_logit_norm"] = M.annotate(
        xr.DataArray(logit_norm, dims=["prop2_checkpoint", "minibatch_part"]), "mean logit norm of the minibatch",
        None, units="logit", description=f"mean ‖f(x)‖₂ {where}: the logit scale k the proposition's ratio grows with")
    out["prop2_units"] = M.annotate(xr.DataArray(units, dims=["prop2_checkpoint", "subnetwork"]),
                                  "penultimate units per subnetwork", None, units="count", description=split)
    last = out["prop2_grad_ratio"].isel(prop2_checkpoint=-1, drop=True)
    out["prop2_grad_ratio_final"] = final_value(last.drop_vars(list(last.coords)), "prop2_grad_ratio")
    return out
