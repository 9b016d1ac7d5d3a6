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
    assert "--optimizer [sgd|adam|adamw|sam|asam]" in text
    assert "--stop [train-acc|train-loss[=X]|max-steps]" in text
    assert "SGD momentum. [default: 0.0; 0<=x<1]" in text
    assert "Learning rate. [x>0; required]" in text
    assert "Minibatch size. [default: 100; x>=1]" in text  # no 2**31 - 1 upper bound shown
    assert "x --step-factor at --step-at" in text and "`" + "step_factor" not in text
    assert "'{\"n_train\": 2000}'" in text and "e.g. 200,200,200" in text
    assert "not part of the run id" in text and "--out" in text and "--quiet" in text
    assert "resume" in text
