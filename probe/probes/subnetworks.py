"""The gradient probes of the core and spurious subnetworks: Proposition 2 as stated
(prop2_gradients) and the head-column view (subnetwork_gradients); probe/subnetworks.py computes them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..declare import PROBE_FORMAT, Headline, param, probe

if TYPE_CHECKING:
    import xarray as xr

    from ..context import Context


@probe(
    "prop2_gradients",
    "Proposition 2 (Barsbey et al. 2025, supplement D.2, Eq. 8) as stated: on the training minibatch of the "
    "step taken from each of up to 12 evenly spaced checkpoints, recomputed from that checkpoint, the summed "
    "per-sample gradient norms of the loss with respect to the spurious (bias-dominant, BSI >= CSI), core "
    "(class-dominant, CSI > BSI) and dead (CSI = BSI = 0) subnetworks - each unit's incoming weights and the "
    "head column reading it - for bias-aligned and bias-conflicting samples apart, their ratio, and the "
    "minibatch's logit norm (the scale the ratio grows with). Needs the training inputs (the dataset rebuilt).",
    cost="one per-sample backward pass (torch.func vmap) over a minibatch per checkpoint (~0.01x)",
    samples="the recorded training minibatch at each chosen checkpoint (BA and BC apart)",
    runs_model=True,
    headline=(Headline("prop2_grad_ratio_final", "spurious / core gradient-norm ratio (Prop. 2, final)"),),
    params={"prop2_checkpoints": param(12, "checkpoints evaluated, evenly spaced", lo=1, hi=4096)},
    coords=("prop2_iteration", "prop2_minibatch_iteration", "prop2_split_iteration"),
)
def prop2_gradients(ctx: Context) -> xr.Dataset:
    from ..subnetworks import probe_prop2_gradients

    return probe_prop2_gradients(ctx)


@probe(
    "subnetwork_gradients",
    "The head-column ratio (a cheap view, not Proposition 2's quantity): the summed per-sample gradient "
    "norms of the head's columns reading the bias-dominant (CSI <= BSI) over those reading the "
    "class-dominant (CSI > BSI) penultimate neurons at each snapshot, on the probe subset of the test split; "
    "exact from the stored probe logits and activations (||grad|| = ||softmax - onehot|| * ||h_S||, so per "
    "sample it is the activation-norm ratio ||h_S||/||h_C||).",
    format=PROBE_FORMAT + 1,
    cost="reads the stored probe logits and activations (~0.01x)",
    samples="the probe subset, every snapshot (all of it, and its bias-conflicting samples)",
)
def subnetwork_gradients(ctx: Context) -> xr.Dataset:
    from ..subnetworks import probe_subnetwork_gradients

    return probe_subnetwork_gradients(ctx)
