"""The selection probe: the criteria a sweep's run and stopping point are picked by, per full
snapshot (probe/selection.py computes them and the sweep's selection table)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..declare import probe, var

if TYPE_CHECKING:
    import xarray as xr

    from ..context import Context


@probe(
    "selection",
    "Offline model selection (as SubpopBench, DomainBed and WILDS select): per full snapshot, the criteria a "
    "sweep's run and stopping point are picked by - validation worst-group accuracy (group labels), "
    "validation worst-class and validation average accuracy (no group labels), on the run's validation split "
    "(the dataset's own, or val_fraction of the training pool) - and the oracle's (test worst-group accuracy), "
    "with the test unbiased and worst-group accuracy a pick is judged by and the number of classes predicted "
    "(1: degenerate). lrscope.selection_table(open_sweep(...)) and the report's Model selection table pick over "
    "the sweep. A run without a validation split (stores written before it, val_fraction 0): the validation "
    "criteria are not defined, the oracle is; data without a bias attribute: the worst-group ones are not.",
    cost="reads the stored test and validation logits (~0.01x)",
    samples="the whole validation split and the whole test split, at full snapshots",
    variables={
        "selection_test_unbiased_accuracy": var("test unbiased accuracy (selection)", "accuracy on the test split at "
                                                "the full snapshot (the paper's unbiased accuracy where y and b are "
                                                "independent there): what a selection's pick is judged by; NaN at "
                                                "light snapshots", "fraction"),
        "selection_test_worst_group_accuracy": var("test worst-group accuracy (selection)", "lowest (y, b)-group "
                                                   "accuracy on the test split at the full snapshot: the oracle's "
                                                   "criterion and what a pick is judged by", "fraction"),
        "val_worst_group_accuracy": var("validation worst-group accuracy", "lowest (y, b)-group accuracy on the "
                                        "validation split at the full snapshot: model selection with group labels",
                                        "fraction"),
        "val_worst_class_accuracy": var("validation worst-class accuracy", "lowest per-class accuracy on the "
                                        "validation split at the full snapshot: model selection without group labels",
                                        "fraction"),
        "val_average_accuracy": var("validation average accuracy", "accuracy on the validation split (distributed "
                                    "like the training data: the training-group-weighted average accuracy) at the "
                                    "full snapshot: model selection without group labels", "fraction"),
        "predicted_classes": var("classes predicted (test split)", "number of distinct classes the network predicts "
                                 "over the test split at the full snapshot; 1: degenerate (one class everywhere)",
                                 "count"),
    },
)
def selection(ctx: Context) -> xr.Dataset:
    from ..selection import probe_selection

    return probe_selection(ctx)
