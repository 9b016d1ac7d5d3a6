"""The stall probe: runs whose training accuracy sat on a long plateau while many units were dead
(lrscope's own diagnostic; probe/stall.py computes it and says why it exists)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..declare import probe, var

if TYPE_CHECKING:
    import xarray as xr

    from ..context import Context


@probe(
    "stall",
    "Stalled runs (lrscope's diagnostic, not a quantity of the papers): the longest plateau of the "
    "epoch-averaged training accuracy short of fitting the training set (within 0.05, below 0.98), the "
    "fraction of probe inputs with an all-zero penultimate representation (dead inputs) and of units zero "
    "on every input (dead units) per snapshot, and the flag `stalled`: a plateau of at least max(1000 steps, "
    "20 % of the run) with >= 10 % dead inputs or >= 50 % dead units inside it. lrprobe ls, the report and "
    "the explorer show such runs as stalled.",
    cost="reads the log's accuracy and the stored activations (~0.01x)",
    samples="every training minibatch (the log's accuracy) and the probe subset (dead inputs and units)",
    variables={
        "dead_input_fraction": var("dead inputs", "fraction of probe-subset inputs whose non-negative penultimate "
                                   "representation is all zero (every unit inactive)", "fraction"),
        "dead_unit_fraction": var("dead units", "fraction of penultimate units that are zero on every probe-subset "
                                  "input", "fraction"),
        "plateau_steps": var("longest training-accuracy plateau", "the longest stretch of epoch-averaged minibatch "
                             "accuracy within 0.05 of itself, its mean below 0.98", "steps"),
        "plateau_start": var("plateau start", "the iteration the longest plateau starts at", "steps"),
        "plateau_accuracy": var("plateau training accuracy", "mean minibatch accuracy over the longest plateau",
                                "fraction"),
        "plateau_dead_input_fraction": var("dead inputs on the plateau", "the largest dead-input fraction at a "
                                           "snapshot inside the longest plateau", "fraction"),
        "stalled": var("stalled run", "a plateau of at least max(1000, 0.2 x the run's steps) steps with, at a "
                       "snapshot inside it, at least 0.1 of the probe inputs or 0.5 of the units dead"),
    },
)
def stall(ctx: Context) -> xr.Dataset:
    from ..stall import probe_stall

    return probe_stall(ctx)
