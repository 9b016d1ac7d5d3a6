"""Shared fixtures: tiny but real runs (real torch training, real Zarr stores on disk)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
# built datasets are cached on disk: keep the tests' cache out of the user's home, and remove it
if "LRSCOPE_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["LRSCOPE_CACHE"] = tempfile.mkdtemp(prefix="lrscope-cache-")
    atexit.register(shutil.rmtree, os.environ["LRSCOPE_CACHE"], ignore_errors=True)

import torch  # noqa: E402

torch.set_num_threads(1)

from lrscope.train.config import RunConfig  # noqa: E402
from lrscope.train.loop import train_run  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Tests marked `long` first, the rest in their order: on make test-slow's workers the short ones
    then fill in around the long ones, and no worker is left alone with one at the end (collected in
    file order, the slow suite took 40 min on 2 workers for 63 min of CPU time)."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # a stable sort


TINY_DATA = {"n_train": 400, "n_test": 400, "core_bits": 3, "spurious_bits": 1, "noise_bits": 6}


def tiny_config(**kw) -> RunConfig:
    """A tiny parity run. It trains on its whole pool of 400 (val_fraction 0, as runs did before the
    validation split: the tests' sizes and batch counts are those); tests/test_selection.py trains
    with the held-out validation split."""
    base = dict(dataset="parity", model="fcn", lr=0.1, widths=[32, 32], data_options=dict(TINY_DATA),
                max_steps=120, snapshot_every=20, checkpoint_every=40, probe_size=100, batch_size=50,
                val_fraction=0.0)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture
def tiny():
    return tiny_config


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory):
    """Four finished runs (2 LRs x 2 seeds) with probes computed, shared by read-only tests."""
    from lrscope.probe.runner import compute_paths

    out = tmp_path_factory.mktemp("sweep")
    for lr in (0.02, 0.5):
        for seed in (0, 1):
            train_run(tiny_config(lr=lr, seed=seed, max_steps=400, stop="max-steps"), out, progress=False)
    compute_paths(out, progress=False)
    return out


@pytest.fixture
def disk_fills_up(monkeypatch):
    """Call it to make the disk fill up after `after` checkpoint-parameter chunks have been written
    (zarr's LocalStore raises ENOSPC from then on); it returns a function that frees the disk."""
    import errno

    from zarr.storage import _local

    real_put = _local._put

    def fill(after: int = 7):
        calls = {"n": 0}

        def full_put(path, value, exclusive=False):
            if "checkpoints/params" in str(path) and "/c/" in str(path):
                calls["n"] += 1
                if calls["n"] > after:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return real_put(path, value, exclusive=exclusive)

        monkeypatch.setattr(_local, "_put", full_put)
        return lambda: monkeypatch.setattr(_local, "_put", real_put)

    return fill
