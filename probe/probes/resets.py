"""The neuron_resets probe: per-neuron attribution resets through training (probe/resets.py
computes them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..declare import param, probe
from .attributions import ATTR_SAMPLES

if TYPE_CHECKING:
    import xarray as xr

    from ..context import Context


@probe(
    "neuron_resets",
    "Per-neuron attribution resets (supplement Fig. 18, bottom): for the most bias-selective penultimate "
    "neurons (highest final BSI), the spurious-region share of each neuron's InputXGradient attribution at "
    "up to 24 evenly spaced checkpoints, the norm of its incoming weights' update since the previous one, the "
    "resets (falls of the share by >= 0.2) and the rank correlation of update size and fall. Needs input "
    "regions (parity, Double MNIST, MNIST-CIFAR: moon-star and Colored MNIST have none, their cue is in the "
    "class's own pixels); resolution: the checkpoint interval.",
    cost="one backward pass per chosen neuron and checkpoint over the probe inputs (~0.3 s a parity run "
    "for 8 neurons; asked by name: lrprobe compute --only neuron_resets)",
    samples="up to 256 probe-subset samples, evenly spaced through it (neurons chosen by BSI on the whole subset)",
    default=False,
    runs_model=True,
    params={
        "reset_checkpoints": param(24, "checkpoints examined, evenly spaced", lo=2, hi=4096),
        "reset_neurons": param(8, "neurons followed, the highest final BSI first", lo=1, hi=1 << 16),
        "attr_samples": ATTR_SAMPLES,
    },
    coords=("reset_iteration", "reset_checkpoint_position", "reset_neuron_index"),
)
def neuron_resets(ctx: Context) -> xr.Dataset:
    from ..resets import probe_neuron_resets

    return probe_neuron_resets(ctx)
