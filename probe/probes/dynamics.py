"""The dynamics probe: per-sample training dynamics from the minibatch log (probe/dynamics.py
computes them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..declare import probe

if TYPE_CHECKING:
    import xarray as xr

    from ..context import Context


@probe(
    "dynamics",
    "Per training sample, from the minibatch log: Dataset-Cartography confidence, variability and "
    "correctness (Swayamdipta et al. 2020), forgetting events (Toneva et al. 2019), first-learned and "
    "last-mistake iterations; their summaries over bias-aligned and bias-conflicting samples and over "
    "(y, b) groups, and per-epoch curves. Defined on diverged runs.",
    cost="streams the log chunk by chunk in O(n_train) memory (~0.03x)",
    samples="every training sample, at each of its presentations in the minibatch log",
)
def dynamics(ctx: Context) -> xr.Dataset:
    from ..dynamics import probe_dynamics

    return probe_dynamics(ctx)
