"""Data placement (train/placement.py): a run whose data live in host memory or in a memory-mapped
file writes the same store, bit for bit, as a run whose data live on the device, for the FCN, the
CNN and batched sweeps; `auto` picks from the (forced) budgets; a killed mmap run resumes to the
same store."""

import json
import subprocess

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

import lrscope
from lrscope.cli.train import main as lrtrain
from lrscope.store import schema as S
from lrscope.store.compare import differences
from lrscope.train import placement as P
from lrscope.train.batched import train_batched
from lrscope.train.data import build_dataset, is_mapped
from lrscope.train.loop import train_run

from conftest import tiny_config

CNN = dict(dataset="colored_mnist", model="cnn", model_options={"width": 0.125}, stop="max-steps",
           data_options={"base": "digits", "n_train": 150, "n_test": 70}, max_steps=24, snapshot_every=8,
           checkpoint_every=8, probe_size=20, batch_size=20, train_logits="always")


def assert_bitwise_equal(a, b):
    assert differences(a, b) == []


def placement_of(path) -> str:
    return zarr.open_group(str(path), mode="r").attrs[S.ATTR_DATA_PLACEMENT]


def train_each(tmp_path, placements=("device", "host", "mmap"), **kw):
    paths = {}
    for p in placements:
        r = train_run(tiny_config(deterministic=True, data_placement=p, **kw), tmp_path / p, progress=False)
        assert r.status == "completed", r.message
        assert placement_of(r.path) == p
        paths[p] = r.path
    return paths


def test_fcn_host_and_mmap_stores_equal_device_store(tmp_path):
    # 120 steps of 50 over 400 samples: epochs end mid-block, so the feeder prefetches across epochs
    paths = train_each(tmp_path, stop="max-steps", max_steps=130, train_logits="always")
    assert_bitwise_equal(paths["device"], paths["host"])
    assert_bitwise_equal(paths["device"], paths["mmap"])
    ds = lrscope.open_run(paths["mmap"], probes=False)
    assert ds.sizes["iteration"] == 130 and np.isfinite(ds.train_logits.values[-1]).all()


def test_cnn_on_cached_images_host_and_mmap_equal_device(tmp_path):
    # colored_mnist is cached: its inputs come back memory-mapped from the cache's .npy files (uint8)
    bundle = build_dataset("colored_mnist", **CNN["data_options"])
    again = build_dataset("colored_mnist", **CNN["data_options"])
    assert is_mapped(again.train.x) and again.train.x.dtype == torch.uint8
    assert torch.equal(bundle.train.x, again.train.x)
    paths = train_each(tmp_path, **CNN)
    assert_bitwise_equal(paths["device"], paths["host"])
    assert_bitwise_equal(paths["device"], paths["mmap"])


@pytest.mark.parametrize("model", ["fcn", "cnn"])
def test_batched_sweep_on_host_and_mmap_data(tmp_path, model):
    kw = dict(stop="max-steps", max_steps=50, train_logits="always") if model == "fcn" else dict(CNN)
    out = {}
    for p in ("device", "host", "mmap"):
        configs = [tiny_config(lr=lr, seed=s, deterministic=True, data_placement=p, **kw)
                   for lr, s in ((0.05, 0), (0.5, 1))]
        results = train_batched(configs, tmp_path / p, progress=False)
        assert [r.status for r in results] == ["completed", "completed"]
        out[p] = [r.path for r in results]
    for a, b, c in zip(out["device"], out["host"], out["mmap"]):
        assert placement_of(b) == "host" and placement_of(c) == "mmap"
        assert_bitwise_equal(a, b)
        assert_bitwise_equal(a, c)


def test_batched_member_leaving_the_stack_on_host_data(tmp_path):
    """A diverging run leaves the stack mid-epoch: the prefetched batch of the old stack is dropped."""
    kw = dict(stop="max-steps", max_steps=40)
    out = {}
    for p in ("device", "host"):
        configs = [tiny_config(lr=lr, seed=0, deterministic=True, data_placement=p, **kw) for lr in (0.05, 1e6)]
        out[p] = train_batched(configs, tmp_path / p, progress=False)
    assert [r.status for r in out["host"]] == ["completed", "diverged"]
    for a, b in zip(out["device"], out["host"]):
        assert_bitwise_equal(a.path, b.path)


def test_auto_follows_the_budgets(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv(P.DEVICE_BUDGET_ENV, "1000")
    monkeypatch.setenv(P.HOST_BUDGET_ENV, "5000")
    assert P.choose("auto", 1000, cpu) == "device"
    assert P.choose("auto", 1001, cpu) == "host"
    assert P.choose("auto", 5001, cpu) == "mmap"
    assert P.choose("device", 10**15, cpu) == "device"  # asked for: the knob wins
    monkeypatch.delenv(P.DEVICE_BUDGET_ENV)
    monkeypatch.delenv(P.HOST_BUDGET_ENV)
    assert 0 < P.host_budget() <= P.host_available()
    assert P.choose("auto", 1000, cpu) == "device"  # this machine: a kilobyte fits
    assert P.choose("auto", 2**60, cpu) == "mmap"  # an exabyte does not


@pytest.mark.parametrize("device_budget,host_budget,expected", [
    (None, None, "device"), ("0", None, "host"), ("0", "0", "mmap")])
def test_auto_from_forced_budgets_on_the_cli(tmp_path, monkeypatch, device_budget, host_budget, expected):
    for name, v in ((P.DEVICE_BUDGET_ENV, device_budget), (P.HOST_BUDGET_ENV, host_budget)):
        if v is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, v)
    args = ["run", "--lr", "0.1", "--widths", "16", "--max-steps", "10", "--probe-size", "20", "--stop", "max-steps",
            "--data-options", json.dumps({"n_train": 200, "n_test": 100, "core_bits": 3, "spurious_bits": 1,
                                          "noise_bits": 6}), "--out", str(tmp_path), "--deterministic"]
    res = CliRunner().invoke(lrtrain, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert f"data placement {expected}, asked: auto" in res.stderr
    (store,) = tmp_path.glob("*.zarr")
    assert placement_of(store) == expected
    cfg = lrscope.open_run(store, probes=False).attrs["config"]
    assert cfg["data_placement"] == "auto"
    # an execution detail: the same run id whatever the placement, and a rerun asking for another
    # placement finds the run done (no "different config" refusal)
    res = CliRunner().invoke(lrtrain, [*args, "--data-placement", "host"], catch_exceptions=False)
    assert res.exit_code == 0 and "already completed" in res.output, res.output


@pytest.mark.parametrize("value", ["lots", "-5"])
def test_bad_budget_is_one_line_and_touches_nothing(tmp_path, monkeypatch, value):
    monkeypatch.setenv(P.HOST_BUDGET_ENV, value)
    res = CliRunner().invoke(lrtrain, ["run", "--lr", "0.1", "--out", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and P.HOST_BUDGET_ENV in lines[0] and lines[0].startswith("Error: "), res.stderr
    assert not (tmp_path / "out").exists()


def test_mmap_spill_is_a_mapped_file_that_leaves_nothing_behind(tmp_path):
    x = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    m = P.spill(x, tmp_path)
    assert is_mapped(m) and torch.equal(m, x)
    assert list(tmp_path.iterdir()) == []  # unlinked at once; the mapping holds the data
    src = P.HostData(m, torch.device("cpu"), mapped=True)
    idx = torch.tensor([[5, 0, 3], [1, 1, 4]])
    assert torch.equal(src.gather(idx), x[idx])
    assert torch.equal(torch.cat(list(src.chunks(4))), x)
    src.close()


@pytest.mark.integration  # a subprocess killed: after the fast suite (make test-slow)
def test_sigkill_then_resume_on_mmap_data(tmp_path, monkeypatch):
    import test_resume
    from test_resume import assert_same_store, committed, kill_after
    from test_resume import lrtrain as lrtrain_cmd

    monkeypatch.setattr(test_resume, "ARGS", [*test_resume.ARGS, "--deterministic"])
    # both budgets 0: `auto` memory-maps the data (the helpers' command line has no placement option)
    monkeypatch.setenv(P.DEVICE_BUDGET_ENV, "0")
    monkeypatch.setenv(P.HOST_BUDGET_ENV, "0")
    ref_out = tmp_path / "ref"
    cmd, env = lrtrain_cmd(ref_out, "--data-placement", "device")
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    ref = next(ref_out.glob("*.zarr"))
    assert placement_of(ref) == "device"

    out = tmp_path / "killed"
    store = kill_after(out, 4)
    assert placement_of(store) == "mmap"
    assert committed(store)["iteration"] < 1500
    cmd, env = lrtrain_cmd(out)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert placement_of(store) == "mmap"
    assert_same_store(ref, store)
    assert_bitwise_equal(ref, store)


def test_sweep_option_overrides_the_spec(tmp_path):
    spec = tmp_path / "grid.toml"
    spec.write_text("[base]\ndataset='parity'\nwidths=[16]\nmax_steps=6\nstop='max-steps'\nprobe_size=20\n"
                    "data_placement='host'\ndata_options={n_train=200, n_test=100, core_bits=3, spurious_bits=1, "
                    "noise_bits=6}\n[grid]\nlr=[0.1]\n")
    res = CliRunner().invoke(lrtrain, ["sweep", str(spec), "--out", str(tmp_path / "a"), "--quiet"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(lrtrain, ["sweep", str(spec), "--out", str(tmp_path / "b"), "--quiet",
                                       "--data-placement", "mmap"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    (a,), (b,) = (tmp_path / "a").glob("*.zarr"), (tmp_path / "b").glob("*.zarr")
    assert a.name == b.name and placement_of(a) == "host" and placement_of(b) == "mmap"
    assert_bitwise_equal(a, b)
    res = CliRunner().invoke(lrtrain, ["sweep", str(spec), "--out", str(tmp_path / "c"), "--data-placement", "gpu"])
    assert res.exit_code == 2 and "unknown data_placement 'gpu'" in res.output and not (tmp_path / "c").exists()
