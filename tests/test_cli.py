"""The real CLIs through click's runner: happy paths and one-line errors (exit 2)."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import lrscope
from lrscope.cli.probe import main as lrprobe
from lrscope.cli.train import main as lrtrain
from lrscope.store import schema as S

TINY = ["--widths", "32,32", "--data-options", json.dumps({"n_train": 400, "n_test": 400, "core_bits": 3,
                                                            "spurious_bits": 1, "noise_bits": 6}),
        "--batch-size", "50", "--probe-size", "100", "--snapshot-every", "20", "--checkpoint-every", "40", "--quiet"]


def run(cli, args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def one_line_error(res, *needles):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in res.output
    for n in needles:
        assert n in lines[0], lines[0]


def test_train_probe_ls_report(tmp_path):
    out = tmp_path / "runs"
    res = run(lrtrain, ["run", "--lr", "0.1", "--max-steps", "80", "--out", str(out), *TINY])
    assert res.exit_code == 0, res.output
    stores = list(out.glob("*.zarr"))
    assert len(stores) == 1 and "completed" in res.output
    # a second identical command does nothing and says so
    res = run(lrtrain, ["run", "--lr", "0.1", "--max-steps", "80", "--out", str(out), *TINY])
    assert res.exit_code == 0 and "nothing to do" in res.output
    import dataclasses

    from lrscope.probe.registry import PROBES
    n = sum(e.default for e in PROBES.values())
    res = run(lrprobe, ["compute", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert f"{n} probes computed" in res.output
    res = run(lrprobe, ["compute", str(out), "--quiet"])
    assert f"0 probes computed, {n} up to date" in res.output
    # a probe whose definition changed (its format bumped) is recomputed, alone
    before = PROBES["pruning"]
    PROBES["pruning"] = dataclasses.replace(before, format=99)
    try:
        res = run(lrprobe, ["compute", str(out), "--quiet"])
    finally:
        PROBES["pruning"] = before
    assert f"1 probes computed, {n - 1} up to date" in res.output, res.output
    ds = lrscope.open_run(stores[0])
    # the paper's definition, not clipped (this tiny run's pruned networks can beat the unpruned one)
    curve = ds.pruning_structured
    assert float(ds.prunability) == pytest.approx(float((curve / curve.sel(kappa=0.0)).mean()))
    assert ds.unbiased_accuracy.sizes["snapshot"] == ds.sizes["snapshot"]
    res = run(lrprobe, ["ls", str(out)])
    assert res.exit_code == 0 and stores[0].stem in res.output
    assert "completed" in res.output or "max_steps" in res.output  # max_steps: ended before its stop criterion
    report = tmp_path / "rep" / "report.html"
    res = run(lrprobe, ["report", str(out), "-o", str(report)])
    assert res.exit_code == 0, res.output
    html = report.read_text()
    assert "Bokeh" in html and "cdn.bokeh.org" not in html  # inlined resources: opens offline
    assert not re.search(r"<script[^>]*\bsrc=", html)  # nothing loaded from outside (Panel's shim used to be)
    assert "<nav class=toc>" in html and 'href="#through-training"' in html
    # one run, one LR: its values, no direction, and its dynamics rather than figures against the LR
    assert "one LR: -" in html and "Training loss, accuracy and gradient norm" in html
    assert "Headline metrics against the LR" not in html
    assert "mean pruned accuracy" in html and "with the LR" in html


@pytest.mark.parametrize("args,needles", [
    (["run", "--lr", "0"], ["learning rate", "in (0, 3.40282e+38]"]),
    (["run", "--lr", "-1"], ["learning rate"]),
    (["run", "--lr", "nan"], ["learning rate"]),
    (["run", "--lr", "0.1", "--batch-size", "0"], ["batch_size"]),
    (["run", "--lr", "0.1", "--max-steps", "0"], ["max_steps"]),
    (["run", "--lr", "0.1", "--momentum", "1.5"], ["momentum"]),
    (["run", "--lr", "0.1", "--weight-decay", "-1"], ["weight_decay"]),
    (["run", "--lr", "0.1", "--bias-conflicting-ratio", "1.5"], ["bias-conflicting ratio", "[0, 1]"]),
    (["run", "--lr", "0.1", "--bias-conflicting-ratio", "-0.1"], ["bias-conflicting ratio"]),
    (["run", "--lr", "0.1", "--dataset", "nope"], ["unknown dataset", "parity"]),
    (["run", "--lr", "0.1", "--model", "nope"], ["unknown model", "fcn"]),
    (["run", "--lr", "0.1", "--optimizer", "nope"], ["unknown optimizer", "sgd"]),
    (["run", "--lr", "0.1", "--loss", "hinge"], ["unknown loss"]),
    (["run", "--lr", "0.1", "--schedule", "linear"], ["unknown schedule", "cosine"]),
    (["run", "--lr", "0.1", "--stop", "train-loss=abc"], ["--stop", "train-loss=1e-5"]),
    (["run", "--lr", "0.1", "--stop", "train-loss=-1"], ["stop_loss"]),
    (["run", "--lr", "0.1", "--optimizer", "sam", "--sam-rho", "0"], ["sam_rho"]),
    (["run", "--lr", "0.1", "--warmup-steps", "500", "--max-steps", "100"], ["warmup_steps"]),
    (["run", "--lr", "0.1", "--schedule", "wsd", "--decay-fraction", "0"], ["decay_fraction"]),
    (["run", "--lr", "0.1", "--widths", "a,b"], ["--widths"]),
    (["run", "--lr", "0.1", "--data-options", "{bad"], ["--data-options", "JSON"]),
    (["run", "--lr", "0.1", "--name", "../escape"], ["run id", "not allowed"]),
    (["run", "--lr", "0.1", "--dataset", "colored_mnist", "--data-root", "/nonexistent"], ["not found", "to get them"]),
    (["run", "--lr", "0.1", "--dataset", "colored_mnist", "--data-options", '{"base": "svhn"}'], ["unknown base"]),
    (["run", "--lr", "0.1", "--data-options", '{"bits": 3}'], ["unknown data option", "noise_bits"]),
    (["run", "--lr", "0.1", "--early-snapshots", "some"], ["early_snapshots"]),
    (["run", "--lr", "0.1", "--name", "a/b"], ["run id"]),
    (["run", "--lr", "abc"], ["--lr"]),
    (["run"], ["--lr"]),
    (["nosuchcommand"], ["No such command"]),
    (["sweep", "missing.toml"], ["not found"]),
    (["sweep", "x.toml", "--workers", "0"], ["--workers"]),
])
def test_lrtrain_bad_input(tmp_path, monkeypatch, args, needles):
    monkeypatch.chdir(tmp_path)
    one_line_error(run(lrtrain, args), *needles)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("*.zarr"))


@pytest.mark.parametrize("spec,needles", [
    ("[base]\nlr = 0.1\n[grid]\nseed = [", ["not valid TOML"]),
    ("[base]\nlr = 0.1\nbogus = 3\n", ["unknown config field", "bogus"]),
    ("[base]\nlr = 0.1\n[grid]\nlr = [0.1, 0.2]\n", ["both [base] and [grid]"]),
    ("[grid]\nlr = []\n", ["non-empty list"]),
    ("[grid]\nlr = [0.1, -0.5]\n", ["learning rate"]),
    ("[grid]\nlr = [0.1, 0.1]\n", ["repeats a run"]),
    ("[base]\nlr = 0.1\n[extra]\nx = 1\n", ["unknown section"]),
])
def test_sweep_spec_errors(tmp_path, spec, needles):
    p = tmp_path / "s.toml"
    p.write_text(spec)
    one_line_error(run(lrtrain, ["sweep", str(p), "--out", str(tmp_path / "o")]), *needles)


def test_lrprobe_bad_input(tmp_path, tiny):
    one_line_error(run(lrprobe, ["compute", str(tmp_path / "nothing.zarr")]), "no such file")
    d = tmp_path / "plain"
    d.mkdir()
    (d / "file.txt").write_text("x")
    one_line_error(run(lrprobe, ["compute", str(d)]), "no run stores")
    z = tmp_path / "other.zarr"
    zarr.open_group(str(z), mode="w")
    one_line_error(run(lrprobe, ["ls", str(z)]), "not an lrscope run store")
    from lrscope.train.loop import train_run

    r = train_run(tiny(max_steps=40), tmp_path / "runs", progress=False)
    one_line_error(run(lrprobe, ["compute", str(r.path), "--only", "nope"]), "unknown probe", "accuracy")
    one_line_error(run(lrprobe, ["compute", str(r.path), "--kappa", "2"]), "--kappa")
    zarr.open_group(str(r.path), mode="r+").attrs[S.ATTR_SCHEMA] = 99
    one_line_error(run(lrprobe, ["ls", str(r.path)]), "newer than this lrscope")


def test_store_with_different_config_is_not_overwritten(tmp_path):
    out = tmp_path / "runs"
    res = run(lrtrain, ["run", "--lr", "0.1", "--max-steps", "40", "--out", str(out), "--name", "mine", *TINY])
    assert res.exit_code == 0
    before = sorted(p.name for p in (out / "mine.zarr").rglob("*"))
    res = run(lrtrain, ["run", "--lr", "0.2", "--max-steps", "40", "--out", str(out), "--name", "mine", *TINY])
    one_line_error(res, "different config", "lr")
    assert sorted(p.name for p in (out / "mine.zarr").rglob("*")) == before


def test_console_scripts_exit_code_and_help(tmp_path):
    exe = [sys.executable, "-m", "lrscope.cli.train"]
    r = subprocess.run([sys.executable, "-c", "from lrscope.cli.train import main; main()", "run", "--lr", "-1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-c", "from lrscope.cli.train import main; main()", "run", "--help"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "--lr" in r.stdout and "resume" in r.stdout
    del exe


def test_divergence_is_a_result(tmp_path, tiny):
    from lrscope.train.loop import train_run

    r = train_run(tiny(lr=1e6, max_steps=200, stop="max-steps"), tmp_path, progress=False)
    assert r.status == "diverged"
    ds = lrscope.open_run(r.path)
    assert ds.attrs["status"] == "diverged" and "non-finite" in ds.attrs["reason"]
    assert not np.isfinite(ds.loss.values[-1]) and np.isfinite(ds.loss.values[:-1]).all()
    assert ds.attrs["diverged_at"] == ds.sizes["iteration"] - 1
    # probing and reporting a diverged run works and flags it
    res = run(lrprobe, ["report", str(tmp_path), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    assert "diverged" in (tmp_path / "r.html").read_text()


def test_example_specs_expand(tmp_path):
    """Every shipped spec (the demo, each Table 1 row, the Table 2 comparators) is a valid grid, and
    the generator reproduces the committed files."""
    from pathlib import Path

    from lrscope.train.sweep import load_spec

    repo = Path(__file__).resolve().parents[1]
    specs = sorted(p for p in (repo / "examples").rglob("*.toml") if p.name != "pyproject.toml")  # own_model's
    assert len(specs) >= 1 + 23 + 24
    for spec in specs:
        configs = load_spec(spec)
        assert len({c.run_id() for c in configs}) == len(configs) >= 2
    subprocess.run([sys.executable, str(repo / "scripts" / "paper_specs.py")], cwd=tmp_path, check=True)
    for f in (tmp_path / "examples" / "paper").iterdir():
        assert f.read_text() == (repo / "examples" / "paper" / f.name).read_text(), f.name
    res = run(lrtrain, ["sweep", str(repo / "examples" / "paper" / "table1-parity-fcn.toml"), "--dry-run",
                        "--data-root", str(tmp_path), "--device", "cpu"])
    assert res.exit_code == 0 and len(res.output.split()) == 21
