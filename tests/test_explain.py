"""An xarray that explains itself (issue #18, item 4): every variable of open_run / open_sweep
carries long_name, description (and units where they apply); `run` is indexed by run id; a
step schedule's per-iteration LR survives open_sweep beside the configured `lr`; config
coordinates never replace a variable; snapshots are read per run at their own end
(`last_snapshot`) or at a common iteration (`at_iteration`), so the docstring example gives no
NaN; group and layer labels are coordinates."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

import lrscope
from lrscope.store import schema as S
from lrscope.train.config import RunConfig
from lrscope.train.loop import train_run

BASE = dict(dataset="parity", model="fcn", widths=[16], max_steps=200, stop="max-steps", probe_size=40,
            data_options={"n_train": 400, "n_test": 400})


def config(**kw) -> RunConfig:
    return RunConfig(**{**BASE, **kw})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Three short runs of different lengths, one with a step schedule and focal loss, all
    probes computed: {name: RunConfig} and the folder."""
    from lrscope.probe.runner import compute_paths

    out = tmp_path_factory.mktemp("explain")
    runs = {"long": config(lr=0.1),
            "short": config(lr=0.5, max_steps=120),
            "step": config(lr=0.5, max_steps=150, schedule="step", step_at=60, loss="focal")}
    for cfg in runs.values():
        train_run(cfg, out, progress=False)
    compute_paths(out, progress=False)
    return runs, out


def test_every_variable_explains_itself(sweep):
    runs, out = sweep
    sw = lrscope.open_sweep(out)
    ds = lrscope.open_run(out / f"{runs['long'].run_id()}.zarr")
    for obj, what in ((sw, "open_sweep"), (ds, "open_run")):
        for name, var in obj.variables.items():
            # (a name nobody described would get its name as long_name, and no description)
            for key in ("long_name", "description"):
                assert isinstance(var.attrs.get(key), str) and var.attrs[key], f"{what}: {name} lacks {key}"
    assert len(sw.data_vars) > 100
    # a probe result computed from a described variable may carry its description (xarray keeps attrs):
    # what a variable says is its own, never that of the run variable it was computed from
    probe_vars = set(lrscope.store.read_probes(ds.attrs["store"]).variables)
    store_vars = [n for n in ds.variables if n not in probe_vars]
    inherited = {ds[n].attrs["description"]: n for n in store_vars}
    for name, var in sw.variables.items():
        if name not in store_vars:
            said = inherited.get(var.attrs["description"], name)
            assert said == name, f"{name} says it is {said}"
    assert sw.activation_sparsity.attrs["description"].startswith("fraction of penultimate activations")
    assert sw.loss_ratio.attrs["units"] == "fraction"
    for name, units in (("loss", "nats"), ("accuracy", "fraction"), ("bc_count", "count"),
                        ("snapshot_iteration", "iteration"), ("unbiased_accuracy_final", "fraction"),
                        ("iteration", "iteration"), ("kappa", "fraction")):
        assert sw[name].attrs["units"] == units, name
    # the probes' own attrs survive the sweep's stack/concat (they win over the schema's long_name)
    assert sw.activation_compressibility.attrs["q"] == 2 and sw.activation_compressibility.attrs["kappa"] == 0.1
    assert sw.activation_compressibility.attrs["long_name"] == "activation (2, 0.1)-compressibility"
    assert sw.prunability.attrs["higher_is_better"] == 1 and sw.prunability.attrs["evaluated_on"] == "test"
    assert sw.dyn_confidence.attrs["description"] == ds.dyn_confidence.attrs["description"]
    assert "(final)" in sw.csi_mean_final.attrs["long_name"]
    assert sw.lr.attrs["long_name"] == "configured learning rate"


def test_run_is_indexed_by_run_id(sweep, tmp_path):
    runs, out = sweep
    sw = lrscope.open_sweep(out)
    ids = sorted(c.run_id() for c in runs.values())
    assert sorted(sw.run.values.tolist()) == ids and "run_id" not in sw.coords
    rid = runs["short"].run_id()
    one, ds = sw.sel(run=rid), lrscope.open_run(out / f"{rid}.zarr")
    n = ds.sizes["iteration"]
    np.testing.assert_array_equal(one.loss.values[:n], ds.loss.values)
    assert float(one.lr) == 0.5 and str(one.status.values) == "completed"
    assert float(one.prunability) == float(ds.prunability)
    # the same run in two folders: the folder tells them apart
    for sub in ("a", "b"):
        shutil.copytree(out / f"{rid}.zarr", tmp_path / sub / f"{rid}.zarr")
    two = lrscope.open_sweep([tmp_path / "a", tmp_path / "b"])
    assert two.run.values.tolist() == [f"a/{rid}", f"b/{rid}"]
    assert float(two.sel(run=f"b/{rid}").prunability) == float(ds.prunability)


def test_step_schedule_keeps_its_per_iteration_lr(sweep):
    runs, out = sweep
    sw = lrscope.open_sweep(out)
    step = sw.sel(run=runs["step"].run_id())
    lr_t = step.lr_schedule.values
    np.testing.assert_allclose(lr_t[:60], 0.5)
    np.testing.assert_allclose(lr_t[60:150], 0.05, rtol=1e-6)
    assert np.isnan(lr_t[150:]).all() and len(lr_t) == 200  # padded to the longest run
    assert float(step.lr) == 0.5  # the configured LR is the run coordinate
    assert sw.lr.dims == ("run",) and sw.lr_schedule.dims == ("run", "iteration")
    # config fields never replace a variable: the per-step loss stays, the configured loss is cfg_loss
    assert sw.loss.dims == ("run", "iteration") and np.isfinite(step.loss.values[:150]).all()
    assert sorted(sw.cfg_loss.values.tolist()) == ["ce", "ce", "focal"]
    assert sw.schedule.sel(run=runs["step"].run_id()) == "step"
    # the rule behind it: no config field takes the name of a variable of the runs
    for f in dataclasses.fields(RunConfig):
        name = S.CONFIG_COORD.get(f.name, f.name)
        assert name not in sw.data_vars and name not in sw.dims, f.name
    # open_run reads log/lr under the same name
    ds = lrscope.open_run(out / f"{runs['step'].run_id()}.zarr")
    assert "lr" not in ds.variables and ds.lr_schedule.dims == ("iteration",)
    np.testing.assert_allclose(ds.lr_schedule.values, runs["step"].lr_at(np.arange(150)), rtol=1e-6)


def test_docstring_examples_give_numbers(sweep):
    """open_sweep's docstring, run on the sweep: no NaN in what it shows."""
    runs, out = sweep
    sw = lrscope.open_sweep(out)
    lines = [ln.strip()[4:].split("  #")[0].strip() for ln in lrscope.open_sweep.__doc__.splitlines()
             if ln.strip().startswith(">>> ")]
    assert any("groupby" in ln for ln in lines)
    for line in lines:
        if "open_sweep(" in line:
            continue
        line = line.replace("parity-fcn-lr0.75-s0", runs["long"].run_id())
        res = eval(line, {"lrscope": lrscope, "sw": sw})
        if line.endswith(".plot()"):
            continue
        assert not np.isnan(np.asarray(res.values, dtype=float)).any(), line
    # why the helpers: the last padded snapshot is NaN for the shorter runs
    assert np.isnan(sw.unbiased_accuracy.isel(snapshot=-1).sel(run=runs["short"].run_id()))
    last = lrscope.last_snapshot(sw.unbiased_accuracy)
    np.testing.assert_array_equal(last.values, sw.unbiased_accuracy_final.values)
    for name, cfg in runs.items():
        assert int(last.snapshot_iteration.sel(run=cfg.run_id())) == cfg.max_steps, name
    assert "snapshot" not in lrscope.last_snapshot(sw).probe_accuracy.dims


def test_runs_align_on_iteration(sweep):
    runs, out = sweep
    sw = lrscope.open_sweep(out)
    assert np.isfinite(sw.loss.sel(iteration=100).values).all()
    at = sw.loss.sel(iteration=130)
    assert np.isnan(at.sel(run=runs["short"].run_id())) and np.isfinite(at.sel(run=runs["long"].run_id()))
    # snapshots: at a common iteration every run has a value; past a run's end it has none
    common = lrscope.at_iteration(sw.probe_accuracy, 64)
    assert common.dims == ("run",) and np.isfinite(common.values).all()
    assert (common.snapshot_iteration.values == 64).all()
    end = lrscope.at_iteration(sw.probe_accuracy, 150)
    assert np.isfinite(end.sel(run=runs["step"].run_id())) and np.isnan(end.sel(run=runs["long"].run_id()))
    assert np.isnan(end.sel(run=runs["short"].run_id()))
    ds = lrscope.at_iteration(sw[["probe_accuracy", "csi_mean"]], 64)
    assert set(ds.data_vars) == {"probe_accuracy", "csi_mean"} and np.isfinite(ds.csi_mean.values).all()


def test_groups_regions_and_layers_are_labelled(sweep):
    runs, out = sweep
    sw = lrscope.open_sweep(out)
    assert sw.group_label.values.tolist() == ["y=0,b=0", "y=0,b=1", "y=1,b=0", "y=1,b=1"]
    for g, y, b in zip(sw.group.values, sw.group_y.values, sw.group_b.values):
        m = sw.test_group.values == g
        assert m.any() and (sw.test_y.values[m] == y).all() and (sw.test_b.values[m] == b).all()
    # select a group by its labels
    bc = sw.group_accuracy.where(sw.group_y != sw.group_b, drop=True)
    assert bc.group_label.values.tolist() == ["y=0,b=1", "y=1,b=0"]
    assert sw.dyn_group_confidence.group_label.values.tolist() == sw.group_label.values.tolist()
    assert sorted(sw.region.values.tolist()) == ["core", "noise", "spurious"]
    assert sw.ig_core_share.attrs["long_name"]
    assert sw.layer_name.values.tolist() == ["features.1.weight", "head.weight"]
    ds = lrscope.open_run(out / f"{runs['long'].run_id()}.zarr")
    assert ds.group_label.values.tolist() == sw.group_label.values.tolist()
    assert ds.layer_param_compressibility.layer_name.values.tolist() == ["features.1.weight", "head.weight"]
