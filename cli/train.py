"""``lrtrain``: train runs and sweeps into Zarr run stores."""

from __future__ import annotations

import json

import click

from ..errors import ConfigError
from .common import OneLineErrors

OPTIONAL = object()


def _json_dict(text: str | None, name: str) -> dict:
    if not text:
        return {}
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{name}: not valid JSON ({e.msg})") from None
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


@main.command("run")
@click.option("--dataset", default="parity", show_default=True, help="Dataset name (see `lrtrain datasets`).")
@click.option("--model", default="fcn", show_default=True, help="Model name (see `lrtrain models`).")
@click.option("--lr", type=float, required=True, help="Learning rate (> 0).")
@click.option("--seed", type=int, default=0, show_default=True, help="Initialisation and minibatch-order seed.")
@click.option("--data-seed", type=int, default=0, show_default=True, help="Dataset generation seed.")
@click.option("--batch-size", type=int, default=100, show_default=True)
@click.option("--optimizer", default="sgd", show_default=True,
              help="sgd | adam | adamw | sam | asam (SAM/ASAM on SGD with --momentum and --weight-decay).")
@click.option("--sam-rho", type=float, default=0.05, show_default=True, help="SAM/ASAM neighbourhood radius.")
@click.option("--momentum", type=float, default=0.0, show_default=True)
@click.option("--weight-decay", type=float, default=0.0, show_default=True, help="L2 (optimizer weight decay).")
@click.option("--l1", type=float, default=0.0, show_default=True, help="L1 penalty coefficient.")
@click.option("--loss", default="ce", show_default=True, help="ce | focal")
@click.option("--focal-gamma", type=float, default=2.0, show_default=True)
@click.option("--schedule", default="constant", show_default=True,
              help="LR schedule: constant | step (x --step-factor at --step-at) | cosine (to 0 at --max-steps) | "
                   "wsd (warm-up, stable, linear decay over the last --decay-fraction).")
@click.option("--step-at", type=int, default=1000, show_default=True, help="step schedule: iteration of the drop.")
@click.option("--step-factor", type=float, default=0.1, show_default=True, help="step schedule: LR multiplier.")
@click.option("--warmup-steps", type=int, default=0, show_default=True, help="Linear LR warm-up (any schedule).")
@click.option("--decay-fraction", type=float, default=0.2, show_default=True, help="wsd: decaying fraction of --max-steps.")
@click.option("--stop", default="train-acc", show_default=True,
              help="train-acc: stop at 100% training accuracy; train-loss[=1e-5]: 100% and CE below the "
                   "threshold; max-steps: run all --max-steps.")
@click.option("--max-steps", type=int, default=20000, show_default=True, help="Upper bound on optimizer steps.")
@click.option("--bias-conflicting-ratio", type=float, default=None,
              help="Fraction of bias-conflicting training samples (default: the dataset's paper value).")
@click.option("--widths", default=None, help="FCN hidden widths, e.g. 200,200,200.")
@click.option("--data-options", default=None, help="Dataset knobs as JSON, e.g. '{\"n_train\": 2000}'.")
@click.option("--model-options", default=None, help="Model knobs as JSON, e.g. '{\"width\": 0.25}'.")
@click.option("--weights", default=None, type=click.Path(dir_okay=False),
              help="Initialise from a local state-dict file (e.g. torchvision's ImageNet Swin-T); "
                   "mismatched tensors such as the head stay freshly initialised. Nothing is downloaded.")
@click.option("--snapshot-every", type=int, default=1000, show_default=True,
              help="Snapshot period in steps (plus log-spaced snapshots before it and a final one).")
@click.option("--early-snapshots", default="light", show_default=True,
              help="Log-spaced early snapshots: light (probe subset only, cheap) | full (whole test set).")
@click.option("--checkpoint-every", type=int, default=2000, show_default=True, help="Checkpoint (resume point) period.")
@click.option("--probe-size", type=int, default=1000, show_default=True,
              help="Group-balanced test samples whose penultimate activations are recorded.")
@click.option("--train-logits", default="auto", show_default=True,
              help="Train-set logits at full snapshots: auto (when a pass costs <= 2% of the steps "
                   "between snapshots) | always | final (last snapshot only).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda")
@click.option("--precision", default="fp32", show_default=True,
              help="fp32 | bf16 (autocast forward passes; weights and optimizer state stay fp32).")
@click.option("--channels-last", is_flag=True, help="NHWC memory format for convnets (faster on GPUs).")
@click.option("--deterministic", is_flag=True, help="Deterministic algorithms only (bitwise-repeatable CUDA runs).")
@click.option("--data-root", default=None, type=click.Path(file_okay=False),
              help="Folder of file-based datasets (MNIST IDX files, ...).")
@click.option("--out", "out", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Output folder; the run is written to <out>/<run-id>.zarr.")
@click.option("--name", default=None, help="Run id (default: dataset-model-lr-seed[-hash]).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run_cmd(**kw):
    """Train one run, or resume it if it was interrupted (same command). A finished run is left as is."""
    from ..train.config import RunConfig
    from ..train.loop import train_run
    from .common import parse_floats

    out, name, quiet = kw.pop("out"), kw.pop("name"), kw.pop("quiet")
    widths = kw.pop("widths")
    if widths is not None:
        ws = parse_floats(widths, "--widths")
        if any(w != int(w) for w in ws):
            raise ConfigError(f"--widths: expected integers, got {widths!r}")
        kw["widths"] = [int(w) for w in ws]
    stop = kw["stop"]
    if stop.startswith("train-loss="):
        kw["stop"] = "train-loss"
        try:
            kw["stop_loss"] = float(stop.split("=", 1)[1])
        except ValueError:
            raise ConfigError(f"--stop {stop}: expected a number after '=', e.g. train-loss=1e-5") from None
    kw["data_options"] = _json_dict(kw.pop("data_options"), "--data-options")
    kw["model_options"] = _json_dict(kw.pop("model_options"), "--model-options")
    cfg = RunConfig(**kw).validate()
    r = train_run(cfg, out, run_id=name, progress=not quiet)
    click.echo(r.message)
    click.echo(str(r.path))


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
@click.option("--batched", is_flag=True,
              help="Train fresh runs that differ only in lr and seed as one stacked model (torch.func; "
                   "fcn and cnn with SGD), each into its own store; the others run as usual.")
@click.option("--dry-run", is_flag=True, help="List the runs and exit.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def sweep_cmd(spec, out, workers, scheduler, data_root, device, batched, dry_run, quiet):
    """Train every run of a TOML grid SPEC (skips finished runs, resumes interrupted ones).

    \b
    On a SLURM machine (pip install dask-jobqueue):
      python -c "from dask_jobqueue import SLURMCluster; c = SLURMCluster(cores=8, memory='32GB',
                 job_extra_directives=['--gres=gpu:1']); c.scale(jobs=4); print(c.scheduler_address); input()"
      lrtrain sweep spec.toml --out /shared/runs --scheduler tcp://<that address>
    """
    from ..train.sweep import load_spec, run_sweep

    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    configs = load_spec(spec)
    for c in configs:  # execution settings: not part of a run's identity
        if data_root is not None:
            c.data_root = data_root
        if device is not None:
            c.device = device
            c.validate()
    if dry_run:
        for c in configs:
            click.echo(c.run_id())
        return
    failed = []

    def report(run_id, status, message):
        if status in ("error", "failed"):
            failed.append(message)

    results = run_sweep(configs, out, workers=workers, progress=not quiet, on_result=report, scheduler=scheduler,
                        batched=int(batched))
    counts = {}
    for _, status, _ in results:
        counts[status] = counts.get(status, 0) + 1
    click.echo(f"{len(results)} runs in {out}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    for m in failed:
        click.echo(f"  {m}", err=True)
    if failed:
        raise SystemExit(1)


@main.command("datasets")
def datasets_cmd():
    """List the registered datasets."""
    from ..train.data import DATASETS, DEFAULT_RHO

    for name in sorted(DATASETS):
        doc = (DATASETS[name].__doc__ or "").strip().splitlines()[0]
        rho = "n/a" if DEFAULT_RHO[name] is None else f"{DEFAULT_RHO[name]:g}"
        click.echo(f"{name:20s} rho_train={rho:<8s} {doc}")


@main.command("models")
def models_cmd():
    """List the registered models."""
    from ..train.models import MODELS

    for name in sorted(MODELS):
        doc = (MODELS[name].__doc__ or "").strip().splitlines()
        click.echo(f"{name:20s} {doc[0] if doc else ''}")
