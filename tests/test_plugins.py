"""Plugins (issue 24): examples/own_model installed into a temporary folder (pip --target, offline) and
put on the PYTHONPATH of subprocesses, which list, train and probe with it; processes without it
probe what the stored arrays allow; an edited plugin is refused until the override. The import-path
form (a module on PYTHONPATH, no entry point) too. This test process never imports the plugin."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lrscope
from lrscope.errors import PluginChanged, PluginMissing

REPO = Path(__file__).resolve().parents[1]
TINY = ["--lr", "0.1", "--max-steps", "30", "--snapshot-every", "10", "--checkpoint-every", "10", "--probe-size",
        "40", "--batch-size", "40", "--quiet"]


def _env(*paths) -> dict:
    """This process's environment with `paths` first on PYTHONPATH, and the lrscope being tested after."""
    here = str(Path(lrscope.__file__).parent.parent)
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, paths), here, *rest]), "OMP_NUM_THREADS": "1"}


def cli(tool: str, *args, paths=(), cwd=None) -> subprocess.CompletedProcess:
    code = f"from lrscope.cli.{tool} import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=_env(*paths), cwd=cwd, timeout=300)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("Error: "), (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    return lines[0]


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """examples/own_model installed into a temporary folder (the source copied first: pip builds in it)."""
    tmp = tmp_path_factory.mktemp("plugin")
    src = tmp / "own_model_src"
    shutil.copytree(REPO / "examples" / "own_model", src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(target), str(src)], check=True, capture_output=True, timeout=300)
    assert (target / "own_model" / "nets.py").exists()
    return target


@pytest.fixture(scope="module")
def trained(site, tmp_path_factory) -> Path:
    """One run of the plugin's CNN on the plugin's dataset, named by their entry points, probed in
    another process (pruning and the plugin probe included)."""
    out = tmp_path_factory.mktemp("runs")
    r = cli("train", "run", "--dataset", "corner_stripes", "--model", "own_cnn", "--features-at", "fc",
            "--data-options", '{"n_train": 120, "n_test": 120}', "--model-options", '{"width": 4}', "--out", out,
            *TINY, paths=[site])
    assert r.returncode == 0, r.stderr
    (store,) = out.glob("*.zarr")
    r = cli("probe", "compute", store, "--quiet", paths=[site])
    assert r.returncode == 0, r.stderr
    return store


def test_listings_show_the_plugins_without_torch(site):
    code = """
import contextlib, io, json, sys
from lrscope.cli.probe import main as lrprobe
from lrscope.cli.train import main as lrtrain
out = {}
for name, cli, args in (("datasets", lrtrain, ["datasets"]), ("models", lrtrain, ["models"]),
                        ("probes", lrprobe, ["list"])):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            cli(args)
        except SystemExit as e:
            assert e.code == 0, e.code
    out[name] = buf.getvalue()
out["loaded"] = [m for m in ("torch", "xarray") if m in sys.modules]
print(json.dumps(out))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(site), timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["loaded"] == []  # the example imports torch inside its builders
    assert "own_cnn  (plugin from own-model 0.1.0; own_model.nets:small_cnn; image inputs" in out["models"]
    assert "own_mlp  (plugin from own-model 0.1.0; own_model.nets:mlp" in out["models"]
    assert "width = 8: an integer in [1, 256]; channels of the first convolution" in out["models"]
    assert "fcn  (--widths; --batched)" in out["models"]  # the built-ins stay first, as they were
    assert "corner_stripes  (plugin from own-model 0.1.0; own_model.data:corner_stripes; rho_train=0.1)" \
        in out["datasets"]
    assert "noise = 0.3: a finite number in [0, 10]" in out["datasets"]
    assert "logit_margin  (format 3; plugin from own-model 0.1.0; own_model.probes:probe_logit_margin)" \
        in out["probes"]
    assert "pruning  (format 6; runs the network)" in out["probes"]
    assert "Runs of plugin models" in out["probes"]


@pytest.mark.integration  # subprocesses that train and probe (~70 s on the 2-core machine)
def test_a_plugin_run_records_its_provenance_and_probes(trained, site, tmp_path):
    attrs = json.loads((trained / "zarr.json").read_text())["attributes"]
    assert attrs["config"]["model"] == "own_model.nets:small_cnn"  # the entry point's name, resolved
    assert attrs["config"]["dataset"] == "own_model.data:corner_stripes"
    assert attrs["config"]["features_at"] == "fc"
    rec = attrs["plugins"]["model"]
    assert rec["import_path"] == "own_model.nets:small_cnn"
    assert (rec["distribution"], rec["version"], rec["source"]) == ("own-model", "0.1.0", "nets.py")
    assert rec["sha256"] == hashlib.sha256((site / "own_model" / "nets.py").read_bytes()).hexdigest()
    assert attrs["plugins"]["dataset"]["sha256"] == \
        hashlib.sha256((site / "own_model" / "data.py").read_bytes()).hexdigest()
    assert attrs["model_info"]["parameter_names"] == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                                                      "fc.weight", "fc.bias"]
    assert trained.name.startswith("own_model.data.corner_stripes-own_model.nets.small_cnn-lr0.1-s0-")
    # opened here, without the plugin: every probe's variables, the plugin probe's included
    ds = lrscope.open_run(trained)
    assert ds.sizes["neuron"] == 8  # fc's input: 2 x width pooled channels
    for v in ("unbiased_accuracy_final", "prunability", "pruning_structured", "ig_entropy", "csi_mean_final",
              "activation_compressibility_final", "logit_margin", "logit_margin_final"):
        assert v in ds, v
    assert ds.prunability.attrs.get("long_name")
    assert json.loads(ds.layer_param_compressibility.attrs["layers"]) == ["conv1.weight", "conv2.weight",
                                                                          "fc.weight"]
    assert ds.logit_margin.attrs["long_name"] == "mean logit margin (probe subset)"
    # the report, in another process with the plugin
    r = cli("probe", "report", trained, "-o", tmp_path / "report.html", "--no-compute", paths=[site])
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "report.html").stat().st_size > 10_000
    # load_model in a process with the plugin rebuilds the user's own module and weights
    code = ("import sys, lrscope; m = lrscope.load_model(sys.argv[1]); "
            "print(type(m.net).__name__, sorted(m.state_dict())[0], m.features_at)")
    r = subprocess.run([sys.executable, "-c", code, str(trained)], capture_output=True, text=True, env=_env(site),
                       timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["Sequential", "conv1.bias", "fc"], r.stderr


@pytest.mark.integration  # subprocesses that train and probe (~70 s on the 2-core machine)
def test_without_the_plugin_the_array_probes_are_computed(trained, tmp_path):
    store = tmp_path / trained.name
    shutil.copytree(trained, store)
    r = cli("probe", "compute", store, "--force", "--quiet")  # no plugin on this process's path
    assert r.returncode == 0, r.stderr
    reason = "not defined: plugin model own_model.nets:small_cnn: cannot import own_model.nets (ModuleNotFoundError"
    for probe in ("pruning", "attributions"):
        assert f"{probe}: {reason}" in r.stdout, r.stdout
    assert "1 runs: 10 probes computed" in r.stdout, r.stdout  # accuracy, compressibility, representation, ...
    with pytest.raises(PluginMissing, match="own_model.nets:small_cnn: cannot import own_model.nets"):
        lrscope.load_model(store)
    r = cli("probe", "ls", store)  # says which probes are not defined here, and why
    assert r.returncode == 0, r.stderr
    assert ("plugin model own_model.nets:small_cnn (own-model, 0.1.0, features at fc): not importable here: the "
            "probes that run the network are not defined") in r.stdout, r.stdout
    # the array-only probe results computed here equal those computed with the plugin
    a, b = lrscope.open_run(trained), lrscope.open_run(store)
    for v in ("unbiased_accuracy_final", "param_compressibility", "csi_mean_final"):
        assert float(a[v]) == float(b[v]), v


@pytest.mark.integration  # subprocesses that train and probe (~70 s on the 2-core machine)
def test_an_edited_plugin_is_refused_until_allowed(trained, site, tmp_path):
    edited = tmp_path / "site"
    shutil.copytree(site, edited)
    nets = edited / "own_model" / "nets.py"
    nets.write_text(nets.read_text() + "\n# edited after training\n")
    store = tmp_path / "runs" / trained.name
    shutil.copytree(trained, store)
    before = tree(tmp_path / "runs")
    line = one_line_error(cli("probe", "compute", store, "--quiet", "--force", paths=[edited]))
    was = json.loads((trained / "zarr.json").read_text())["attributes"]["plugins"]["model"]["sha256"]
    now = hashlib.sha256(nets.read_bytes()).hexdigest()
    assert "plugin model own_model.nets:small_cnn changed since the run was trained" in line
    assert f"{now[:16]} now, {was[:16]} at training" in line and "--allow-changed-plugins" in line
    assert tree(tmp_path / "runs") == before
    r = cli("probe", "compute", store, "--quiet", "--force", "--only", "pruning", "--allow-changed-plugins",
            paths=[edited])
    assert r.returncode == 0 and "1 probes computed" in r.stdout, r.stderr
    # the array-only probes need no check
    r = cli("probe", "compute", store, "--quiet", "--force", "--only", "accuracy", paths=[edited])
    assert r.returncode == 0, r.stderr
    code = ("import sys, lrscope\ntry:\n    lrscope.load_model(sys.argv[1])\nexcept lrscope.LrscopeError as e:\n"
            "    print(type(e).__name__)\nm = lrscope.load_model(sys.argv[1], allow_changed_plugins=True)\n"
            "print(type(m).__name__)")
    r = subprocess.run([sys.executable, "-c", code, str(store)], capture_output=True, text=True, env=_env(edited),
                       timeout=120)
    assert r.stdout.split() == ["PluginChanged", "TappedNet"], r.stderr
    assert issubclass(PluginChanged, lrscope.LrscopeError)


@pytest.mark.integration  # subprocesses that train and probe (~70 s on the 2-core machine)
def test_an_import_path_without_entry_point(tmp_path):
    """--model mymod:build with mymod on PYTHONPATH (no distribution, no declaration): trains,
    records distribution None, and probes; pruning of a net whose classifier is not a Linear is
    not defined, with the reason."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "mymod.py").write_text(
        "import math\nfrom collections import OrderedDict\n\n"
        "def build(*, input_shape, num_classes):\n"
        "    from torch import nn\n"
        "    return nn.Sequential(OrderedDict([('flat', nn.Flatten()), ('h', nn.Linear(math.prod(input_shape), 16)),\n"
        "                                      ('relu', nn.ReLU()), ('fc', nn.Linear(16, num_classes))]))\n\n"
        "def boxed(*, input_shape, num_classes):\n"
        "    from torch import nn\n"
        "    return nn.Sequential(OrderedDict([('flat', nn.Flatten()), ('h', nn.Linear(math.prod(input_shape), 16)),\n"
        "                                      ('relu', nn.ReLU()),\n"
        "                                      ('head', nn.Sequential(nn.Linear(16, num_classes)))]))\n")
    data = ["--data-options", '{"n_train": 120, "n_test": 120, "core_bits": 3, "spurious_bits": 1, "noise_bits": 4}']
    out = tmp_path / "runs"
    for model, at in (("mymod:build", "fc"), ("mymod:boxed", "head")):
        r = cli("train", "run", "--model", model, "--features-at", at, *data, "--out", out, *TINY, paths=[mods])
        assert r.returncode == 0, r.stderr
    (plain,) = out.glob("parity-mymod.build-*.zarr")
    (boxed,) = out.glob("parity-mymod.boxed-*.zarr")
    rec = json.loads((plain / "zarr.json").read_text())["attributes"]["plugins"]["model"]
    assert rec["distribution"] is None and rec["version"] is None and rec["source"] == "mymod.py"
    r = cli("probe", "compute", out, "--quiet", "--only", "pruning,compressibility,accuracy", paths=[mods])
    assert r.returncode == 0, r.stderr
    assert "boxed" in r.stdout and "pruning: not defined: plugin model with features_at 'head': that module is a " \
                                   "Sequential, not a torch.nn.Linear" in r.stdout, r.stdout
    assert "1 probes computed" not in r.stdout and "5 probes computed" in r.stdout, r.stdout
    ds = lrscope.open_run(plain)
    assert 0 <= float(ds.prunability) and ds.pruning_structured.sizes["kappa"] == 10


# ----------------------------------------------------------------------------- in this process
def test_a_plugin_run_records_what_its_network_computes(tmp_path, tiny):
    """A plugin model (tests/plugin_toy.py) trained in this process: the stored final probe
    features and logits are the rebuilt network's (the tapped fc input and the output), its
    checkpoint holds the user's own state-dict names, and pruning of a net whose classifier is not
    a Linear is not defined, with the reason."""
    import numpy as np
    import torch

    from lrscope.probe.runner import compute_run
    from lrscope.train.data import as_model_input
    from lrscope.train.loop import train_run

    r = train_run(tiny(model="plugin_toy:mlp", features_at="fc", model_options={"hidden": 12}, widths=None,
                       stop="max-steps"), tmp_path, progress=False)
    assert r.status == "completed" and r.path.name.startswith("parity-plugin_toy.mlp-lr0.1-s0-")
    ds = lrscope.open_run(r.path)
    assert ds.attrs["plugins"]["model"]["distribution"] is None  # a module on the tests' path
    model = lrscope.load_model(ds)
    assert sorted(model.state_dict()) == ["fc.bias", "fc.weight", "hidden.bias", "hidden.weight"]
    x = as_model_input(torch.from_numpy(ds.probe_inputs.values))
    with torch.no_grad():
        feats, logits = model.features_and_logits(x)
    np.testing.assert_allclose(ds.probe_features.isel(snapshot=-1).values, feats.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds.probe_logits.isel(snapshot=-1).values, logits.numpy(), rtol=1e-5, atol=1e-6)
    assert ds.sizes["neuron"] == 12
    out = compute_run(r.path, ["pruning", "compressibility"])
    assert out["pruning"].startswith("computed") and out["compressibility"].startswith("computed"), out

    r2 = train_run(tiny(model="plugin_toy:plain", features_at="classifier", widths=None), tmp_path, progress=False)
    out = compute_run(r2.path, ["pruning", "accuracy"])
    assert out["pruning"] == ("not defined: plugin model with features_at 'classifier': that module is a Sequential, "
                              "not a torch.nn.Linear; structured pruning keeps the classifier whole and needs it to be "
                              "one"), out
    assert out["accuracy"].startswith("computed")


def test_weights_read_from_the_store_are_the_models(tmp_path, tiny):
    """compressibility reads the weights through model_info.parameter_names, without rebuilding the
    model (so a plugin model's run needs no plugin): the same tensors, in the same order, as the
    rebuilt model's parameters with more than one dimension (what it read before)."""
    import numpy as np

    from lrscope.probe.runner import Context
    from lrscope.train.loop import train_run

    r = train_run(tiny(max_steps=40), tmp_path, progress=False)
    ds = lrscope.open_run(r.path, probes=False)
    assert ds.attrs["model_info"]["parameter_names"] == ["features.1.weight", "features.3.weight", "head.weight"]
    stored = Context(r.path, ds).weights
    old = ds.copy()
    old.attrs = {**ds.attrs, "model_info": {k: v for k, v in ds.attrs["model_info"].items()
                                            if k != "parameter_names"}}
    rebuilt = Context(r.path, old).weights  # a store written before the list: the rebuilt model's
    assert [n for n, _ in stored] == [n for n, _ in rebuilt] and len(stored) == 3
    for (_, a), (_, b) in zip(stored, rebuilt):
        np.testing.assert_array_equal(a, b)


def test_a_run_is_not_resumed_with_an_edited_plugin(tmp_path, tiny, monkeypatch):
    """An interrupted run of a plugin model whose source was edited since is refused in one line
    (both hashes); restored, it resumes."""
    from lrscope.train.loop import train_run

    mods = tmp_path / "mods"
    mods.mkdir()
    src = (Path(__file__).parent / "plugin_toy.py").read_text()
    (mods / "resumed_toy.py").write_text(src)
    monkeypatch.syspath_prepend(str(mods))
    cfg = dict(model="resumed_toy:mlp", features_at="fc", widths=None, max_steps=40, stop="max-steps")
    r = train_run(tiny(**cfg), tmp_path / "runs", progress=False)
    meta = json.loads((r.path / "zarr.json").read_text())
    meta["attributes"]["status"] = "running"  # as if it had been killed after its last checkpoint
    (r.path / "zarr.json").write_text(json.dumps(meta))
    (mods / "resumed_toy.py").write_text(src + "\n# edited\n")
    with pytest.raises(PluginChanged, match="resumed_toy:mlp changed since the run was trained: .* restore it"):
        train_run(tiny(**cfg), tmp_path / "runs", progress=False)
    (mods / "resumed_toy.py").write_text(src)
    assert train_run(tiny(**cfg), tmp_path / "runs", progress=False).status == "completed"


def test_a_cached_plugin_dataset_is_rebuilt_when_its_source_changes(tmp_path, monkeypatch):
    """A plugin dataset declared cached=True is cached like a built-in one, keyed by its source's
    sha256 too: an edited recipe is rebuilt, not read from a stale cache."""
    from lrscope.train.data import build_dataset, is_mapped

    monkeypatch.setenv("LRSCOPE_CACHE", str(tmp_path / "cache"))
    mods = tmp_path / "mods"
    mods.mkdir()
    src = ("import numpy as np\nfrom lrscope.train.plugins import plugin_dataset\n"
           "from lrscope.train.recipes import DataBundle, Split\n\n"
           "@plugin_dataset(cached=True)\n"
           "def blobs(*, seed, rho_train):\n"
           "    x = np.random.default_rng(seed).normal(size=(20, 3)).astype(np.float32) + OFFSET\n"
           "    y = np.arange(20) % 2\n"
           "    s = Split.from_numpy(x, y, y, np.arange(20))\n"
           "    return DataBundle('blobs', s, s, 2, 2, (3,), has_bias=False)\n")
    (mods / "cached_toy.py").write_text(src + "OFFSET = 0\n")
    monkeypatch.syspath_prepend(str(mods))
    first = build_dataset("cached_toy:blobs")
    again = build_dataset("cached_toy:blobs")
    assert not is_mapped(first.train.x) and is_mapped(again.train.x)  # the second one read from the cache
    assert first.has_bias is False and again.has_bias is False  # kept by the cache
    assert len(list((tmp_path / "cache").iterdir())) == 1
    (mods / "cached_toy.py").write_text(src + "OFFSET = 5\n")
    import importlib
    import sys as _sys

    importlib.reload(_sys.modules["cached_toy"])
    edited = build_dataset("cached_toy:blobs")
    assert not is_mapped(edited.train.x) and float(edited.train.x.mean()) > 4  # rebuilt from the edited recipe
    assert len(list((tmp_path / "cache").iterdir())) == 2


@pytest.mark.integration  # a real server and Debian's Chromium
def test_a_plugin_run_in_the_explorer(trained, site, tmp_path, monkeypatch):
    """The plugin run drives `lrprobe serve` in real Chromium: plots drawn, widgets and a sample
    selection answered, no console error (the server process has the plugin on its path)."""
    browser = pytest.importorskip("test_app_browser")
    if browser.CHROMIUM is None:
        pytest.skip("chromium not installed (make system installs it)")
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(trained, runs / trained.name)
    monkeypatch.setenv("PYTHONPATH", _env(site)["PYTHONPATH"])
    t = browser.drive([runs])
    assert t["first_paint_s"] < 60 and t["slider_s"] < 10
