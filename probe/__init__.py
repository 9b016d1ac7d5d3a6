"""Probes: the paper's metrics as pure functions, and the runner that writes them to stores."""

_EXPORTS = {
    "attribution": ("attribution_entropy", "attributions", "background_share", "captum_ready", "region_shares"),
    "dynamics": ("dynamics", "sample_dynamics"),
    "importance": ("epoch_importance", "importance_trajectory"),
    "linear": ("feature_probe", "fit_logistic"),
    "metrics": ("MetricError", "ba_bc_loss_ratio", "bias_selectivity", "class_selectivity", "class_separation",
                "compressibility", "gini", "group_accuracy", "importance_weights", "last_mistake", "lorenz_curve",
                "loss_ratio", "neuron_survival", "pq_index", "selectivity", "sparsity"),
    "pruning": ("prunability", "prunability_sum", "pruned_accuracy", "pruning_curve"),
    "selection": ("selection_table",),
    "soup": ("model_soup", "soup_state"),
    "sweep": ("last_snapshot", "loss_ratio_correlation", "lr_sensitive_samples"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name):
    """The probe functions load their modules (xarray, torch) on first use, not on import of the
    package: `lrscope.probe.registry` is read without them (`lrprobe list` answers at once)."""
    if name in _MODULE_OF:
        import importlib

        return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["group_accuracy", "loss_ratio", "ba_bc_loss_ratio", "compressibility", "sparsity", "pq_index",
           "class_separation", "selectivity", "class_selectivity", "bias_selectivity", "neuron_survival",
           "importance_weights", "lorenz_curve", "gini", "feature_probe", "fit_logistic", "pruning_curve",
           "prunability", "prunability_sum", "pruned_accuracy", "MetricError", "attributions",
           "captum_ready", "region_shares", "attribution_entropy",
           "background_share", "lr_sensitive_samples", "loss_ratio_correlation", "last_snapshot", "last_mistake",
           "dynamics", "sample_dynamics", "importance_trajectory", "epoch_importance", "model_soup",
           "soup_state", "selection_table"]
