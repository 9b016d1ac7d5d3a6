"""Slow: a miniature of the parity sweep reproduces the paper's direction (unbiased accuracy,
average CSI and class separation rise with the learning rate)."""

import numpy as np
import pytest

import lrscope
from lrscope.probe.runner import compute_paths
from lrscope.train.config import RunConfig
from lrscope.train.sweep import run_sweep

pytestmark = pytest.mark.slow


def test_parity_miniature_sweep_trend(tmp_path):
    configs = [RunConfig(lr=lr, seed=seed) for lr in (0.01, 0.1, 0.75) for seed in (0, 1)]
    res = run_sweep(configs, tmp_path, workers=2, progress=False)
    assert all(status == "completed" for _, status, _ in res), res
    compute_paths(tmp_path, progress=False, names=["accuracy", "representation"])
    sw = lrscope.open_sweep(tmp_path)
    acc = sw.unbiased_accuracy_final.groupby("lr").mean().values
    csi = sw.csi_mean_final.groupby("lr").mean().values
    sep = sw.class_separation_final.groupby("lr").mean().values
    assert acc[0] < 0.65 and acc[-1] > 0.85, acc  # paper: 55.3% -> 85.7%
    assert np.all(np.diff(acc) > 0), acc
    assert csi[-1] > csi[0] and sep[-1] > sep[0], (csi, sep)
