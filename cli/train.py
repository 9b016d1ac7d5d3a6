"""``lrtrain``: train runs and sweeps into Zarr run stores."""

from __future__ import annotations

import json

import click

from ..errors import ConfigError, StoreError
from .common import OneLineErrors, echo


def _json_dict(text: str | None, name: str) -> dict:
    if not text:
        return {}
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{name}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise ConfigError(f"{name}: nested too deeply") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{name}: expected a JSON object such as '{{\"n_train\": 2000}}'")
    return d


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lrscope")
def main():
    """Train networks and record what they learn into Zarr run stores.

    \b
    Examples:
      lrtrain run --dataset parity --model fcn --lr 0.1 --seed 0 --out runs/
      lrtrain sweep examples/demo.toml --out runs/ --workers 2
      lrtrain datasets ; lrtrain models
    """


# ------------------------------------------------------------------------------- lrtrain run
# RunConfig fields without an option of their own, and why.
NOT_OPTIONS = {"stop_loss": "set by --stop train-loss=X"}
# How the command line spells the fields that are not one plain typed value. Everything else of
# an option (name, type, default, help, choices, range) comes from the field's declaration in
# train/config.py; `config_from_cli` parses these forms.
CLI_FORMS = {
    "lr": {"required": True},
    "widths": {"metavar": "W,W,...", "example": "200,200,200"},
    "stop": {"metavar": "[train-acc|train-loss[=X]|max-steps]"},
    "data_options": {"metavar": "JSON", "example": "'{\"n_train\": 2000}'"},
    "model_options": {"metavar": "JSON", "example": "'{\"width\": 0.25}'"},
    "weights": {"type": click.Path(dir_okay=False), "metavar": "FILE"},
    "data_root": {"type": click.Path(file_okay=False), "metavar": "DIR"},
}
SHOWN_BOUND = 2**20  # larger upper bounds guard against typos (2**31 - 1 steps): not worth a help line


def flag_of(field: str) -> str:
    return "--" + field.replace("_", "-")


def range_text_of(md: dict) -> str:
    """A declared range in click's notation (0<=x<1, x>0)."""
    from ..train.checks import number_text

    lo, hi = md["lo"], md["hi"]
    if hi is not None and hi >= SHOWN_BOUND:
        hi = None
    left = "" if lo is None else f"{number_text(lo)}{'<' if md['lo_open'] else '<='}"
    right = "" if hi is None else f"{'<' if md['hi_open'] else '<='}{number_text(hi)}"
    if lo is None and hi is None:
        return ""
    if hi is None:
        return f"x{'>' if md['lo_open'] else '>='}{number_text(lo)}"
    return f"{left}x{right}"


class KnobOption(click.Option):
    """An option that shows its field's declared range beside its default, as click shows an
    IntRange's; the value itself is checked by RunConfig.validate (its messages name the field)."""

    def __init__(self, *args, range_text: str = "", **kw):
        super().__init__(*args, **kw)
        self.range_text = range_text

    def get_help_record(self, ctx):
        record = super().get_help_record(ctx)
        if record is None or not self.range_text:
            return record
        spec, text = record
        if text.endswith("]") and "  [" in text:  # click's own [default: ...; required]
            head, extra = text[:-1].rsplit("  [", 1)
            items = extra.split("; ")
            items.insert(1 if items[0].startswith("default") else 0, self.range_text)
            return spec, f"{head}  [{'; '.join(items)}]"
        return spec, f"{text}  [{self.range_text}]"


def option_help(field) -> str:
    """A RunConfig field's help as `lrtrain run --help` shows it: its declared help, with the
    other fields it names spelled as their options, the command line's form, and whether it is
    part of the run id."""
    import re

    from ..train.config import field_type

    md, form = field.metadata, CLI_FORMS.get(field.name, {})
    text = re.sub(r"`([a-z_0-9]+)`", lambda m: flag_of(m[1]) if m[1] in RUN_FIELDS else m[0], md["help"])
    if field_type(field.name)[0] is dict:
        text += ", as JSON"
    if "example" in form:
        text += f", e.g. {form['example']}"
    if md["execution"]:
        text += "; not part of the run id"
    return text[:1].upper() + text[1:] + "."


def config_options(fn):
    """Decorate `fn` with one click option per RunConfig field (NOT_OPTIONS aside), in the
    dataclass's order, each derived from the field's declaration."""
    import dataclasses

    from ..train.config import RunConfig, field_type

    for f in reversed(dataclasses.fields(RunConfig)):
        if f.name in NOT_OPTIONS:
            continue
        kind = field_type(f.name)[0]
        form = CLI_FORMS.get(f.name, {})
        kw: dict = {"help": option_help(f), "cls": KnobOption}
        if kind in (int, float):
            kw["range_text"] = range_text_of(f.metadata)
        if kind is bool:
            kw.update(is_flag=True, default=f.default)
        elif form.get("required"):
            kw.update(type=kind, required=True)
        else:
            default = None if f.default is dataclasses.MISSING else f.default  # {} fields: parsed from None
            kw.update(type=form.get("type", kind if kind in (int, float) else str), default=default,
                      show_default=default is not None)
            choices = f.metadata["choices"]
            metavar = form.get("metavar") or (f"[{'|'.join(choices)}]" if choices else None)
            if metavar:
                kw["metavar"] = metavar
        fn = click.option(flag_of(f.name), f.name, **kw)(fn)
    return fn


def _run_fields() -> set[str]:
    import dataclasses

    from ..train.config import RunConfig

    return {f.name for f in dataclasses.fields(RunConfig)}


RUN_FIELDS = _run_fields()


def config_from_cli(kw: dict):
    """The RunConfig of `lrtrain run`'s parsed options (the config fields among `kw`): --widths
    as integers, --stop train-loss=X as stop and stop_loss, the options as JSON objects."""
    from ..train.config import RunConfig
    from .common import parse_ints

    kw = dict(kw)
    if kw["widths"] is not None:
        kw["widths"] = parse_ints(kw["widths"], "--widths")
    stop = kw["stop"]
    if stop.startswith("train-loss="):
        kw["stop"] = "train-loss"
        try:
            kw["stop_loss"] = float(stop.split("=", 1)[1])
        except ValueError:
            raise ConfigError(f"--stop {stop}: expected a number after '=', e.g. train-loss=1e-5") from None
    kw["data_options"] = _json_dict(kw["data_options"], "--data-options")
    kw["model_options"] = _json_dict(kw["model_options"], "--model-options")
    return RunConfig(**kw)


@main.command("run")
@config_options
@click.option("--out", "out", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Output folder; the run is written to <out>/<run-id>.zarr.")
@click.option("--name", default=None, help="Run id (default: dataset-model-lr-seed[-hash]).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run_cmd(out, name, quiet, **kw):
    """Train one run, or resume it if it was interrupted (same command). A finished run is left as is."""
    from ..train.config import check_run_id
    from ..train.loop import train_run
    from .common import check_out_dir

    cfg = config_from_cli(kw).validate()
    run_id = check_run_id(name) if name is not None else cfg.run_id()
    check_out_dir(out)
    data = preflight(cfg, out, run_id)
    r = train_run(cfg, out, run_id=name, progress=not quiet, data=data)
    echo(r.message)
    echo(str(r.path))


def preflight(cfg, out, run_id: str, data=None):
    """Everything a fresh run needs that can fail on the user's input, checked before --out is
    touched: the device, the dataset (built here and handed to the training loop, so a missing
    data root or a recipe's own rule fails first), the model (built on the meta device: no memory)
    and the --weights file. Returns the dataset, or None when the store exists already (a resume
    or a finished run: the training loop decides, and may have nothing to build). `data`: the
    dataset when the caller built it already."""
    import torch

    from ..store.reader import store_exists
    from ..train.data import build_dataset
    from ..train.loop import CHECK_SAMPLES, pick_device, store_path
    from ..train.placement import check_budgets
    from ..train.plugins import is_import_path
    from ..train.restore import build_model, check_on_data

    check_budgets()  # $LRSCOPE_*_BUDGET_BYTES: read by the loop, checked before anything is touched
    path = store_path(out, run_id)
    if store_exists(path):
        return None
    if path.exists() and not path.is_dir():
        raise StoreError(f"{path} exists and is not a run store; refusing to overwrite it")
    device = pick_device(cfg.device)
    bundle = data
    if bundle is None:
        bundle = build_dataset(cfg.dataset, seed=cfg.data_seed, bias_conflicting_ratio=cfg.bias_conflicting_ratio,
                               data_root=cfg.data_root, val_fraction=cfg.val_fraction, **cfg.data_options)
    with torch.device("meta"):
        model = build_model(cfg, bundle.input_shape, bundle.num_classes)
    if is_import_path(cfg.model):  # a plugin model: built for real and checked on a batch of the data
        check_on_data(build_model(cfg, bundle.input_shape, bundle.num_classes).to(device), cfg,
                      bundle.train.x[:CHECK_SAMPLES], bundle.num_classes)
    if cfg.weights:
        import warnings

        from ..train.models import load_weights

        with warnings.catch_warnings():  # loading into meta tensors is a no-op, and torch says so per tensor
            warnings.simplefilter("ignore")
            load_weights(model, cfg.weights)
    return bundle


def preflight_sweep(configs, out) -> None:
    """`preflight` for the runs of a sweep that do not exist yet: each distinct dataset built once
    (into the dataset cache, where the workers find it), each distinct model checked on it."""
    import json

    from ..store.reader import store_exists
    from ..train.loop import store_path

    def data_key(c):
        return json.dumps([c.dataset, c.data_seed, c.bias_conflicting_ratio, c.data_root, c.data_options],
                          sort_keys=True)

    fresh = [c for c in configs if not store_exists(store_path(out, c.run_id()))]
    groups: dict[str, list] = {}
    for c in fresh:
        groups.setdefault(data_key(c), []).append(c)
    for group in groups.values():
        bundle, seen = None, set()
        for c in group:
            key = json.dumps([c.model, c.model_options, c.widths, c.weights, c.device, c.features_at],
                             sort_keys=True)
            if key not in seen:
                seen.add(key)
                bundle = preflight(c, out, c.run_id(), data=bundle)


@main.command("sweep")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--out", default="runs", show_default=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Local worker processes (with --scheduler local: LocalCluster workers).")
@click.option("--scheduler", default=None,
              help="Run on dask.distributed: 'local' starts a LocalCluster, or a scheduler address "
                   "(tcp://host:8786, e.g. a dask-jobqueue SLURMCluster's); --out must be shared storage.")
@click.option("--data-root", default=None, type=click.Path(file_okay=False),
              help="Folder of file-based datasets, for every run (overrides the spec).")
@click.option("--device", default=None, help="auto | cpu | cuda, for every run (overrides the spec).")
@click.option("--data-placement", default=None,
              help="auto | device | host | mmap: where each run's data live, for every run (overrides the spec).")
@click.option("--batched", is_flag=True,
              help="Train fresh runs that differ only in lr and seed as one stacked model (torch.func; "
                   "fcn and cnn with SGD), each into its own store; the others run as usual.")
@click.option("--dry-run", is_flag=True, help="List the runs and exit.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def sweep_cmd(spec, out, workers, scheduler, data_root, device, data_placement, batched, dry_run, quiet):
    """Train every run of a TOML grid SPEC (skips finished runs, resumes interrupted ones).

    \b
    On a SLURM machine (pip install dask-jobqueue):
      python -c "from dask_jobqueue import SLURMCluster; c = SLURMCluster(cores=8, memory='32GB',
                 job_extra_directives=['--gres=gpu:1']); c.scale(jobs=4); print(c.scheduler_address); input()"
      lrtrain sweep spec.toml --out /shared/runs --scheduler tcp://<that address>
    """
    from ..errors import LrscopeError
    from ..train.sweep import load_spec, run_sweep
    from .common import check_out_dir, check_scheduler, check_workers

    check_workers(workers)
    check_scheduler(scheduler)
    configs = load_spec(spec)  # every config validated, its data and model options included
    for c in configs:  # execution settings: not part of a run's identity
        if data_root is not None:
            c.data_root = data_root
        if device is not None:
            c.device = device
        if data_placement is not None:
            c.data_placement = data_placement
        c.validate()
    if dry_run:
        for c in configs:
            echo(c.run_id())
        return
    check_out_dir(out)
    if scheduler in (None, "local"):  # the data are on this machine: check each recipe once
        preflight_sweep(configs, out)
    failed = []

    def report(run_id, status, message):
        if status in ("error", "failed"):
            failed.append(message)

    results = run_sweep(configs, out, workers=workers, progress=not quiet, on_result=report, scheduler=scheduler,
                        batched=int(batched))
    counts = {}
    for _, status, _ in results:
        counts[status] = counts.get(status, 0) + 1
    echo(f"{len(results)} runs in {out}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
               + f" ({results.summary()})")
    if failed:
        distinct = list(dict.fromkeys(failed))  # the same message for every run of a recipe: once
        shown = "; ".join(distinct[:3]) + (f"; and {len(distinct) - 3} more" if len(distinct) > 3 else "")
        raise LrscopeError(f"{len(failed)} of {len(results)} runs failed: {shown}")


def options_lines(options: dict, defaults: dict, indent: str = "      ") -> list[str]:
    """'name = default: type and range (help)' per declared option of a dataset or model."""
    from ..train.checks import describe_range

    out = []
    for k, spec in options.items():
        desc = describe_range(spec["kind"], spec.get("lo"), spec.get("hi"), spec.get("lo_open", False),
                         spec.get("hi_open", False), spec.get("choices"), spec.get("nullable", False))
        note = f"; {spec['help']}" if spec.get("help") else ""
        out.append(f"{indent}{k} = {json.dumps(defaults.get(k))}: {desc}{note}")
    return out


@main.command("datasets")
def datasets_cmd():
    """List the registered datasets: what each is, its paper bias-conflicting ratio, its --data-options."""
    from ..train.data import DATASETS

    def notes(e):
        out = [f"rho_train={e.rho_train:g}" if e.rho_train is not None else "rho_train n/a: a natural bias, or none"]
        widths = getattr(e, "fcn_widths", None)  # plugin entries may predate it
        out += [f"fcn {'x'.join(map(str, widths))}" if len(set(widths)) > 1 else
                f"fcn {len(widths)}x{widths[0]}"] if widths else []
        return out + ["reads --data-root"] * e.reads_files + ["cached"] * e.cached

    for name in sorted(DATASETS):
        e = DATASETS[name]
        _echo_entry(f"{name}  ({'; '.join(notes(e))})", e, "--data-options")
    _echo_plugins("dataset", notes, "--data-options")


@main.command("models")
def models_cmd():
    """List the registered models: what each is, what it takes, its --model-options."""
    from ..train.models import MODELS

    def notes(e):
        return (["image inputs"] * e.image + ["--widths"] * e.takes_widths + ["--batched"] * e.batchable
                + ["heavy on a CPU"] * e.heavy)

    for name in sorted(MODELS):
        e = MODELS[name]
        _echo_entry(f"{name}  ({'; '.join(notes(e))})" if notes(e) else name, e, "--model-options")
    _echo_plugins("model", lambda e: notes(e) + ["--features-at NAME unless it returns a FeatureNet"],
                  "--model-options")


def _echo_plugins(kind: str, notes, flag: str) -> None:
    """The plugins of `kind` installed distributions declare (entry points), after the built-in
    entries: each marked as a plugin with its distribution and import path (loaded here: a plugin
    that fails to load is listed with its one-line error)."""
    from ..train.plugins import GROUPS, distribution_of, listed

    plugins = listed(kind)
    for ep, e, error in plugins:
        dist, version = distribution_of(ep)
        mark = f"plugin from {dist or 'an unknown distribution'} {version or ''}".rstrip()
        path = ep.value.replace(" ", "")
        if error is not None:
            echo(f"{ep.name}  ({mark}; {path}; cannot be loaded)")
            echo(f"    {error}")
            echo()
            continue
        _echo_entry(f"{ep.name}  ({'; '.join([mark, path] + notes(e))})", e, flag)
    if not plugins:
        return
    echo(f"(plugins: entry points in the group {GROUPS[kind]}; --{kind} takes the name or the import path)")
    echo()


def _echo_entry(head: str, e, flag: str) -> None:
    """One registry entry as `lrtrain datasets` / `lrtrain models` print it: its name and notes,
    its full description, and its options with their defaults and ranges."""
    from .common import paragraphs

    echo(head)
    for line in paragraphs(e.description):
        echo(line)
    echo(f"    {flag}:" if e.options else f"    {flag}: none")
    for line in options_lines(e.options, e.defaults):
        echo(line)
    echo()
