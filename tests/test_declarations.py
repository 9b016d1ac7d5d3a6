"""Each knob, dataset, model, probe and figure is declared once (issue #17, items 2 and 3): the
`lrtrain run` options come from the RunConfig fields' declarations, and the listings read the
registries' entries."""

from __future__ import annotations

import dataclasses

from click.testing import CliRunner

from lrscope.cli.train import CLI_FORMS, NOT_OPTIONS, config_from_cli, flag_of, run_cmd
from lrscope.cli.train import main as lrtrain
from lrscope.train.config import RunConfig

FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
NOT_CONFIG = {"out", "name", "quiet"}  # lrtrain run's options that are not config fields


def _options():
    return {p.name: p for p in run_cmd.params}


# ------------------------------------------------------------------------------- knobs (item 2)
def test_every_field_has_exactly_one_option():
    opts = _options()
    assert set(opts) - NOT_CONFIG == set(FIELDS) - set(NOT_OPTIONS)
    assert set(NOT_OPTIONS) <= set(FIELDS) and set(CLI_FORMS) <= set(FIELDS)
    for name, p in opts.items():
        if name in FIELDS:
            assert p.opts == [flag_of(name)], p.opts  # one spelling each
    flags = [o for p in opts.values() for o in p.opts]
    assert len(flags) == len(set(flags))


def test_cli_defaults_are_the_dataclass_defaults():
    """Every option's default is its field's (--lr, required, aside), and the config built from
    the defaults is RunConfig's own: a default that drifts would rename every run."""
    for name, p in _options().items():
        if name not in FIELDS:
            continue
        f = FIELDS[name]
        if CLI_FORMS.get(name, {}).get("required"):
            assert p.required
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if name in ("data_options", "model_options"):  # JSON text, parsed to {}
            assert p.default is None and default == {}
        else:
            assert p.default == default and type(p.default) is type(default), name
    params = run_cmd.make_context("run", ["--lr", "0.1"]).params
    cfg = config_from_cli({k: v for k, v in params.items() if k not in NOT_CONFIG})
    assert cfg == RunConfig(lr=0.1) and cfg.run_id() == "parity-fcn-lr0.1-s0"


def test_cli_forms_parse_into_the_fields():
    params = run_cmd.make_context("run", [
        "--lr", "0.2", "--widths", "16,8", "--stop", "train-loss=1e-4", "--data-options", '{"n_train": 200}',
        "--model-options", "{}", "--channels-last", "--optimizer", "sam", "--momentum", "0.9", "--seed", "3"]).params
    cfg = config_from_cli({k: v for k, v in params.items() if k not in NOT_CONFIG})
    assert cfg == RunConfig(lr=0.2, widths=[16, 8], stop="train-loss", stop_loss=1e-4, data_options={"n_train": 200},
                            channels_last=True, optimizer="sam", momentum=0.9, seed=3)


def test_run_help_reads_well():
    res = CliRunner().invoke(lrtrain, ["run", "--help"], terminal_width=200)
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    for name, f in FIELDS.items():
        assert f.metadata["help"], f"{name} declares no help"
        if name not in NOT_OPTIONS:
            assert flag_of(name) in res.output
    # choices as the metavar, defaults and ranges beside the help, other fields as their options
    assert "--optimizer [sgd|adam|adamw|sam|asam|kron]" in text
    assert "--stop [train-acc|train-loss[=X]|max-steps]" in text
    assert "SGD momentum. [default: 0.0; 0<=x<1]" in text
    assert "Learning rate. [x>0; required]" in text
    assert "Minibatch size. [default: 100; x>=1]" in text  # no 2**31 - 1 upper bound shown
    assert "x --step-factor at --step-at" in text and "`" + "step_factor" not in text
    assert "'{\"n_train\": 2000}'" in text and "e.g. 200,200,200" in text
    assert "not part of the run id" in text and "--out" in text and "--quiet" in text
    assert "resume" in text


# ------------------------------------------------------------------------------- registries (item 3)
def _flat(text: str) -> str:
    return " ".join(text.replace("``", "`").split())


def test_listings_print_every_entry_whole_without_torch():
    """`lrtrain datasets`, `lrtrain models` and `lrprobe list` print every entry's whole
    description and its options, and load neither torch nor xarray (they answer at once)."""
    import subprocess
    import sys

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
out["loaded"] = [m for m in ("torch", "xarray", "zarr", "holoviews", "sklearn") if m in sys.modules]
print(json.dumps(out))
"""
    import json

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = json.loads(r.stdout)
    assert out["loaded"] == []
    from lrscope.probe.registry import PROBES
    from lrscope.train.data import DATASETS
    from lrscope.train.models import MODELS

    for kind, registry, header in (("datasets", DATASETS, "--data-options"), ("models", MODELS, "--model-options")):
        text = _flat(out[kind])
        for name, e in registry.items():
            assert f"{name} " in out[kind] and _flat(e.description) in text, name
            for k, default in e.defaults.items():
                assert f"{k} = {json.dumps(default)}: " in out[kind], (name, k)
        assert text.count(header) == len(registry)
    text = _flat(out["probes"])
    for name, e in PROBES.items():
        assert _flat(e.description) in text and _flat(e.cost) in text, name
    assert "rho_test = 0.5: a finite number in [0, 1]" in out["datasets"]
    assert "width = 1.0: a finite number in (0, 64]" in out["models"]


def test_dataset_entries():
    from lrscope.train.config import check_value
    from lrscope.train.data import DATASETS, check_data_options

    assert {"parity", "moon_star", "colored_mnist", "double_mnist", "mnist_cifar", "corrupted_cifar10", "cifar10",
            "cifar100", "celeba", "waterbirds", "imagenet"} <= set(DATASETS)
    for name, e in DATASETS.items():
        assert e.name == name and e.description and e.build.__doc__
        assert e.rho_train is None or 0 <= e.rho_train <= 1
        assert set(e.defaults) == set(e.options)  # every option has its default in the builder
        for k, v in e.defaults.items():
            check_value(k, v, **e.options[k])  # and the default is a valid value
        assert check_data_options(name, {}) == e.defaults


def test_model_entries():
    from lrscope.train.config import check_value
    from lrscope.train.models import MODELS, check_model_options

    for name, e in MODELS.items():
        assert e.name == name and e.description
        assert set(e.defaults) == set(e.options)
        for k, v in e.defaults.items():
            check_value(k, v, **e.options[k])
        check_model_options(name, {})
    assert [n for n, e in MODELS.items() if e.takes_widths] == ["fcn"]
    assert {n for n, e in MODELS.items() if e.batchable} == {"fcn", "cnn"}


def test_probe_and_figure_entries():
    from lrscope.probe import runner
    from lrscope.probe.registry import PARAMS, PROBES, headlines
    from lrscope.viz import figures as F
    from lrscope.viz.summary import HEAD

    assert runner.PROBES is PROBES and runner.PARAMS == PARAMS
    for name, e in PROBES.items():
        assert e.name == name and e.description and e.cost and callable(e.load())
    vars_ = [h.var for h in headlines()]
    assert len(vars_) == len(set(vars_))
    assert F.HEADLINE == [(h.var, h.label) for h in headlines()]
    assert HEAD == [(h.var, h.short) for h in headlines() if h.short]
    assert PARAMS == {"kappa", "q", "checkpoints", "attr_samples", "ig_steps", "kappas", "criterion", "eval_samples",
                      "reset_checkpoints", "reset_neurons", "segmenter_weights", "segmenter", "prop2_checkpoints"}
    for name, e in F.FIGURES.items():
        assert e.name == name and e.title and callable(e.build)


def test_probe_parameters_are_the_compute_options():
    """Every declared probe parameter (cli=False aside) is one `lrprobe compute` option, made from
    its declaration: its default is the declared one, which is a valid value, and `--help` shows
    the default and the range beside the help. The options that are not parameters are the
    hand-written ones."""
    from lrscope.cli.probe import compute_cmd, probe_flag
    from lrscope.cli.probe import main as lrprobe
    from lrscope.probe.registry import PARAM_DECLS

    hand = {"paths", "only", "force", "data_root", "workers", "scheduler", "device", "allow_changed_plugins",
            "quiet"}
    opts = {p.name: p for p in compute_cmd.params}
    assert set(opts) - hand == {k for k, p in PARAM_DECLS.items() if p.cli}
    assert {k for k, p in PARAM_DECLS.items() if not p.cli} == {"kappas"}  # a list: the Python API only
    for name, p in PARAM_DECLS.items():
        if p.default is not None:
            p.validate(name, p.default)
        if p.cli:
            assert opts[name].opts == [probe_flag(name)] and opts[name].default == p.default, name
    # the existing option names stay
    assert {probe_flag(k) for k in ("kappa", "checkpoints", "criterion", "eval_samples", "segmenter_weights",
                                    "segmenter")} == {"--kappa", "--checkpoints", "--criterion", "--pruning-samples",
                                                      "--segmenter-weights", "--segmenter"}
    res = CliRunner().invoke(lrprobe, ["compute", "--help"], terminal_width=200)
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "(q, κ)-compressibility (compressibility). [default: 0.1; 0<=x<=1]" in text
    assert "Integrated Gradients steps (attributions). [default: 32; 1<=x<=4096]" in text
    assert "(attributions, neuron_resets). [default: 256; 1<=x<=65536]" in text
    assert "--pruning-samples N" in text and "--checkpoints TEXT" in text


def test_one_checkpoints_parser():
    """`--checkpoints` and compute_run(params={"checkpoints": ...}) read the spec with one parser."""
    import pytest

    from lrscope.errors import LrscopeError
    from lrscope.probe.probes.attributions import parse_checkpoints
    from lrscope.probe.registry import check_params

    assert parse_checkpoints("all") == ["all"] and parse_checkpoints(" first, -1 ,2") == ["first", -1, 2]
    for bad in ("abc", "", "first,,last", "1.5", str(2**70)):
        with pytest.raises(LrscopeError):
            parse_checkpoints(bad)
        with pytest.raises(LrscopeError):
            check_params({"checkpoints": bad})


def test_recipe_modules_import_only_the_shared_helpers():
    """No import circle: each recipe module imports from lrscope only train/recipes.py (and the
    errors), recipes.py none of them, and train/data.py is the one place that imports them all."""
    import ast
    from pathlib import Path

    from lrscope.train import data

    train = Path(data.__file__).parent

    def lrscope_imports(path):
        tree = ast.parse(path.read_text())
        return {("." * n.level) + (n.module or "") for n in ast.walk(tree)
                if isinstance(n, ast.ImportFrom) and n.level > 0}

    for module in data.RECIPE_MODULES:
        assert lrscope_imports(train / f"{module}.py") <= {".recipes", "..errors"}, module
    assert lrscope_imports(train / "recipes.py") <= {".checks", "..store.schema", "..errors"}
    imported_by = [p.stem for p in train.glob("*.py") if p.stem != "data"
                   and any(f".{m}" in lrscope_imports(p) for m in data.RECIPE_MODULES)]
    assert imported_by == []


def test_adding_a_probe_is_its_module(tmp_path):
    """A new probe with one parameter is one file in probe/probes/: without touching any other
    module, `lrprobe list` lists it, `lrprobe compute --help` shows its option with its default and
    range, and `lrprobe compute` runs it on a real run (a copy of the package, so the source tree is
    left alone)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    pkg = tmp_path / "site" / "lrscope"
    shutil.copytree(repo, pkg, ignore=shutil.ignore_patterns(".*", "tests", "docs", "examples", "benchmarks",
                                                             "scripts", "__pycache__", "*.egg-info", "demo"))
    (pkg / "probe" / "probes" / "toy_mean.py").write_text('''
"""A toy probe: the mean of the first k logits of the probe subset at each snapshot."""
from ..declare import param, probe, var


@probe("toy_mean", "The mean of the probe subset's logits over the first k samples.",
       cost="reads the stored logits", samples="the first k probe samples",
       params={"toy_k": param(3, "how many probe samples", lo=1, hi=9)},
       variables={"toy_logit_mean": var("mean logit", "mean of the first k samples' logits")})
def toy_mean(ctx):
    k = ctx.param("toy_k")
    return ctx.ds.probe_logits.isel(probe_sample=slice(0, k)).mean(("probe_sample", "class")).to_dataset(
        name="toy_logit_mean")
''')
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))

    def lrprobe(*args):
        return subprocess.run([sys.executable, "-c", "from lrscope.cli.probe import main; main()", *args],
                              env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)

    where = lrprobe("--version")
    assert where.returncode == 0, where.stderr
    listed = lrprobe("list")
    assert "toy_mean" in listed.stdout and "toy_k" in listed.stdout, listed.stdout
    helps = lrprobe("compute", "--help").stdout
    assert "--toy-k" in helps and "1<=x<=9" in helps.replace(" ", "") and "default: 3" in helps, helps
    runs = tmp_path / "runs"
    train = subprocess.run([sys.executable, "-c", "from lrscope.cli.train import main; main()", "run",
                            "--dataset", "parity", "--model", "fcn", "--widths", "8", "--lr", "0.1",
                            "--max-steps", "20", "--data-options", '{"n_train": 100, "n_test": 100}',
                            "--out", str(runs), "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr
    res = lrprobe("compute", str(runs), "--only", "toy_mean", "--toy-k", "5", "--quiet")
    assert res.returncode == 0, res.stderr
    check = subprocess.run([sys.executable, "-c", "import glob, lrscope; ds = lrscope.open_run(glob.glob("
                            f"'{runs}/*.zarr')[0]); print(lrscope.__file__, ds.toy_logit_mean.sizes['snapshot'])"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert check.returncode == 0 and str(pkg) in check.stdout, check.stdout + check.stderr
