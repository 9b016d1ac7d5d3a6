"""Probes: the paper's metrics as pure functions, and the runner that writes them to stores."""

from .linear import feature_probe, fit_logistic
from .metrics import (MetricError, ba_bc_loss_ratio, class_separation, compressibility, gini, group_accuracy,
                      importance_weights, last_mistake, lorenz_curve, loss_ratio, neuron_survival, pq_index, selectivity,
                      sparsity)
from .dynamics import dynamics, sample_dynamics
from .attribution import attribution_entropy, attributions, background_share, captum_ready, region_shares
from .pruning import prunability, pruned_accuracy, pruning_curve
from .sweep import last_snapshot, loss_ratio_correlation, lr_sensitive_samples


def class_selectivity(acts, labels, *, sample_dim="probe_sample", feature_dim="neuron"):
    """CSI per neuron (see :func:`selectivity`)."""
    return selectivity(acts, labels, sample_dim=sample_dim, feature_dim=feature_dim, name="class")


def bias_selectivity(acts, bias_labels, *, sample_dim="probe_sample", feature_dim="neuron"):
    """BSI per neuron: CSI computed with the bias labels."""
    return selectivity(acts, bias_labels, sample_dim=sample_dim, feature_dim=feature_dim, name="bias")


__all__ = ["group_accuracy", "loss_ratio", "ba_bc_loss_ratio", "compressibility", "sparsity", "pq_index",
           "class_separation", "selectivity", "class_selectivity", "bias_selectivity", "neuron_survival",
           "importance_weights", "lorenz_curve", "gini", "feature_probe", "fit_logistic", "pruning_curve",
           "prunability", "pruned_accuracy", "MetricError", "attributions",
           "captum_ready", "region_shares", "attribution_entropy",
           "background_share", "lr_sensitive_samples", "loss_ratio_correlation", "last_snapshot", "last_mistake",
           "dynamics", "sample_dynamics"]
