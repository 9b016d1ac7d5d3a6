"""``lrprobe``: compute probes on run stores, list runs, write the HTML report."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import LrscopeError
from .common import OneLineErrors, echo


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lrscope")
def main():
    """Probe run stores offline: metrics as labelled xarray Datasets, figures, reports.

    \b
    Examples:
      lrprobe compute runs/
      lrprobe ls runs/
      lrprobe report runs/ -o report.html
    """


def probe_flag(name: str) -> str:
    """The `lrprobe compute` option of the probe parameter `name` (its declared `flag`, or --<name>)."""
    from ..probe.registry import PARAM_DECLS

    return PARAM_DECLS[name].flag or "--" + name.replace("_", "-")


def probe_options(fn):
    """Decorate `fn` with one click option per declared probe parameter (probe/registry.py:
    PARAM_DECLS, `cli=False` aside): its type, default, range or choices and help from the
    declaration, and which probes take it. The values are checked against the declaration in
    `probe_params`."""
    from ..probe.registry import PARAM_DECLS, PROBES
    from .train import KnobOption, range_text_of

    for name, p in reversed(list(PARAM_DECLS.items())):
        if not p.cli:
            continue
        users = [e.name for e in PROBES.values() if name in e.params]
        text = p.help[:1].upper() + p.help[1:] + f" ({', '.join(users)})."
        kind = p.type
        kw: dict = {"help": text, "cls": KnobOption, "default": p.default, "show_default": p.default is not None}
        if kind == "path":
            kw["type"] = click.Path(dir_okay=False)
        elif kind in (int, float):
            kw["type"] = kind
            kw["range_text"] = range_text_of({"lo": p.lo, "hi": p.hi, "lo_open": p.lo_open, "hi_open": p.hi_open})
        else:
            kw["type"] = str
        metavar = p.metavar or (f"[{'|'.join(p.choices)}]" if p.choices else None)
        if metavar:
            kw["metavar"] = metavar
        fn = click.option(probe_flag(name), name, **kw)(fn)
    return fn


def probe_params(ctx: click.Context, values: dict) -> dict:
    """The probe parameters of `lrprobe compute`'s options: those given on the command line, each
    checked against its declaration (one-line errors naming the option) and the rules across a
    probe's parameters; a value equal to the declared default is left out (the result's
    provenance, and so whether it is up to date, is the same as without the option); a file
    parameter as its absolute path (workers elsewhere)."""
    from click.core import ParameterSource

    from ..probe.registry import PARAM_DECLS, check_params

    given = {k: v for k, v in values.items() if ctx.get_parameter_source(k) != ParameterSource.DEFAULT}
    for k, v in given.items():
        try:
            PARAM_DECLS[k].validate(k, v)
        except LrscopeError as e:
            raise LrscopeError(f"{probe_flag(k)}: {e}") from None
    check_params(given)
    return {k: str(Path(v).resolve()) if PARAM_DECLS[k].type == "path" else v
            for k, v in given.items() if v != PARAM_DECLS[k].default}


@main.command("compute")
@click.argument("paths", nargs=-1, required=True)
@click.option("--only", default=None, help="Comma-separated probe names (default: every probe but the specialist "
              "ones, marked 'asked by name' in `lrprobe list`).")
@click.option("--force", is_flag=True, help="Recompute probes that are up to date.")
@click.option("--data-root", default=None, help="Where file-based datasets live (for full-test-set pruning).")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Runs probed at once by local processes (with --scheduler local: LocalCluster workers).")
@click.option("--scheduler", default=None,
              help="Probe on dask.distributed, one task per run: 'local' starts a LocalCluster, or a scheduler "
                   "address (tcp://host:8786); the stores must be on storage the workers share.")
@click.option("--device", default="auto", show_default=True,
              help="Where the probes that run the network (pruning, attributions) run: cpu, cuda, or auto "
                   "(cuda when torch sees a GPU, else cpu); recorded in each result's attrs.")
@click.option("--allow-changed-plugins", is_flag=True,
              help="Rebuild a plugin model whose source (sha256 of its module file) changed since the run was "
                   "trained; without it such a run is refused before anything is computed.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@probe_options
@click.pass_context
def compute_cmd(ctx, paths, only, force, data_root, device, workers, scheduler, allow_changed_plugins, quiet,
                **values):
    """Compute probes for run stores (a store, a folder of stores, or a glob) into probes/<name>.

    Up-to-date probes are skipped; a probe whose run has trained on since, or whose definition
    changed, is recomputed. The options after --quiet are the probes' parameters (`lrprobe list`
    says which probe takes which)."""
    from ..probe.registry import PROBES, check_runs
    from ..probe.runner import check_device, compute_paths
    from ..store.reader import find_runs
    from .common import check_scheduler, check_workers

    params = probe_params(ctx, values)
    try:
        check_device(device)
    except LrscopeError as e:
        raise LrscopeError(f"--device: {e}") from None
    check_workers(workers)
    check_scheduler(scheduler)
    names = None
    if only is not None:
        names = [n.strip() for n in only.split(",") if n.strip()]
        unknown = [n for n in names if n not in PROBES]
        if unknown or not names:
            raise LrscopeError(f"--only: unknown probe(s) {', '.join(unknown) or repr(only)}; "
                               f"valid: {', '.join(PROBES)}")
    runs = find_runs(paths)  # no store, no probe: before anything is computed
    check_runs(runs, names if names is not None else [n for n, e in PROBES.items() if e.default],
               {k: v for k, v in values.items() if ctx.get_parameter_source(k) != click.core.ParameterSource.DEFAULT})
    res = compute_paths(paths, names, force=force, data_root=data_root, progress=not quiet, params=params,
                        workers=workers, scheduler=scheduler, device=device,
                        allow_changed_plugins=allow_changed_plugins)
    n_done = sum(1 for r in res.values() for o in r.values() if o.startswith("computed"))
    n_fresh = sum(1 for r in res.values() for o in r.values() if o == "up to date")
    echo(f"{len(res)} runs: {n_done} probes computed, {n_fresh} up to date")
    for path, r in res.items():
        for name, o in r.items():
            if not (o.startswith("computed") or o == "up to date") or "not defined" in o:
                echo(f"  {Path(path).name}: {name}: {o}")
    if any("selection" in r for r in res.values()):
        for line in selection_lines(list(res)):
            echo(line)


def selection_lines(paths) -> list[str]:
    """The selection table of each sweep (dataset, model) of more than one run among `paths`: per
    criterion, the run and snapshot it picks and that pick's test accuracy (the report's table)."""
    from ..probe.selection import selection_table
    from ..store.reader import group_sweeps, open_sweep

    out = []
    for (dataset, model), runs in group_sweeps(paths).items():
        if len(runs) < 2:
            continue
        try:
            t = selection_table(open_sweep([p for p, _ in runs]))
        except LrscopeError as e:
            out.append(f"model selection, {dataset} / {model}: not defined ({e})")
            continue
        out.append(f"model selection, {dataset} / {model} ({len(runs)} runs; test accuracy of each pick):")
        for c in t.criterion.values:
            row = t.sel(criterion=c)
            why = str(row.not_defined.values)
            if why:
                out.append(f"  {c:16s} {why}")
                continue
            out.append(f"  {c:16s} {row.selected_run.item()} @ iteration {int(row.selected_iteration)}: unbiased "
                       f"{float(row.selected_test_unbiased_accuracy):.3f}, worst-group "
                       f"{float(row.selected_test_worst_group_accuracy):.3f}, gap to oracle "
                       f"{float(row.gap_to_oracle):+.3f}" + (" (degenerate)" if bool(row.selected_degenerate) else ""))
    return out


PLUGIN_NOTE = (
    "the probes marked 'runs the network' rebuild it from a checkpoint, which needs the plugin importable and its "
    "module file unchanged since training (the store records its import path, distribution, version and sha256; "
    "a changed one is refused unless --allow-changed-plugins); without the plugin they are 'not defined: plugin "
    "model ...: cannot import ...', and every other probe is computed from the stored arrays. Pruning is not "
    "defined when the --features-at module is not a torch.nn.Linear (structured pruning keeps the classifier "
    "whole), when no Linear/Conv2d layer besides it exists, or when such a layer's weights are used without "
    "calling the module (forward hooks mask the pruned units); pruned networks are evaluated by masking "
    "(lrscope's FCN and CNN are sliced). The outgoing and in-x-out criteria need lrscope's chain networks (NaN "
    "otherwise). neuron_resets needs a weight tensor with one row per penultimate neuron. Selectivity and "
    "activation sparsity assume non-negative (post-ReLU) features unless the builder declares "
    "signed_features=True.")


@main.command("list")
def list_cmd():
    """List the probes `compute` knows: what each computes, what it costs, on which samples, its
    parameters and its headline variables."""
    from ..probe.registry import BROKEN_PLUGINS, PROBES
    from .common import paragraphs

    for name, e in PROBES.items():
        marks = [f"format {e.format}"] + ([f"plugin from {e.plugin}; {e.function}"] if e.plugin else [])
        marks += ["runs the network"] * e.runs_model + ([] if e.default else ["asked by name: --only " + name])
        echo(f"{name}  ({'; '.join(marks)})")
        lines = paragraphs(e.description)
        if e.cost:
            lines += paragraphs(f"cost: {e.cost}", hang="  ")
        if e.samples:
            lines += paragraphs(f"samples: {e.samples}", hang="  ")
        for p, decl in e.params.items():
            how = (probe_flag(p) if decl.cli else "Python API") + (
                f"; default {decl.default}" if decl.default is not None else "")
            lines += paragraphs(f"parameter {p}: {decl.help} ({how})", hang="  ")
        if e.headline:
            lines += paragraphs("headline: " + ", ".join(f"{h.var} ({h.label})" for h in e.headline), hang="  ")
        for line in lines:
            echo(line)
        echo()
    for ep_name, error in BROKEN_PLUGINS.items():
        echo(f"{ep_name}  (plugin probe; cannot be loaded)")
        echo(f"    {error}")
        echo()
    echo("Runs of plugin models (--model package.module:function --features-at NAME):")
    for line in paragraphs(PLUGIN_NOTE, hang="  "):
        echo(line)
    echo()
    echo("Across the runs of a sweep (lrscope.probe, on lrscope.open_sweep's Dataset):")
    for line in paragraphs("model_soup (also `lrprobe soup RUNS`): the uniform model soup of the finished runs' "
                           "final weights across learning rates, one per seed (supplement Fig. 30), its unbiased "
                           "and worst-group accuracy and parameter compressibility beside each ingredient's; "
                           "lr_sensitive_samples (Fig. 8's selection); loss_ratio_correlation (Fig. 12).", hang="  "):
        echo(line)


@main.command("soup")
@click.argument("paths", nargs=-1, required=True)
@click.option("--lrs", default=None, help="Comma-separated learning rates to soup (default: every LR with a finished "
                                          "run).")
@click.option("--seeds", default=None, help="Comma-separated seeds (default: all; one soup per seed).")
@click.option("--bn", type=click.Choice(["recompute", "average"]), default="recompute", show_default=True,
              help="BatchNorm statistics of the soup: re-estimated on the training split, or averaged.")
@click.option("--data-root", default=None, help="Where file-based datasets live (to rebuild the test split).")
def soup_cmd(paths, lrs, seeds, bn, data_root):
    """Model soup (supplement Fig. 30): average the final weights of finished runs across learning
    rates, one soup per seed (same model, data and seed: the same initialisation), and print its
    unbiased and worst-group accuracy and parameter compressibility beside each ingredient's."""
    def numbers(text, kind, opt):
        if text is None:
            return None
        try:
            vals = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise LrscopeError(f"{opt} {text}: not a comma-separated list of numbers") from None
        if not vals:
            raise LrscopeError(f"{opt}: no values in {text!r}")
        return vals

    lr_list, seed_list = numbers(lrs, float, "--lrs"), numbers(seeds, int, "--seeds")
    import lrscope

    from ..probe.soup import model_soup

    out = model_soup(lrscope.open_sweep(list(paths), probes=False), lrs=lr_list, seeds=seed_list,
                     data_root=data_root, bn=bn)
    echo(f"model soup on {out.attrs['eval_split']} split; BatchNorm: {out.attrs['bn_statistics']}")
    echo(f"{'seed':>5} {'model':>12} {'unbiased':>9} {'worst-group':>11} {'param comp':>10}")
    for s in out.seed.values:
        row = out.sel(seed=s)
        for lr in out.lr.values:
            r = row.sel(lr=lr)
            if str(r.ingredient_run.values):
                echo(f"{s:>5} {'lr ' + format(lr, 'g'):>12} {float(r.ingredient_unbiased_accuracy):>9.4f} "
                           f"{float(r.ingredient_worst_group_accuracy):>11.4f} "
                           f"{float(r.ingredient_param_compressibility):>10.4f}")
        echo(f"{s:>5} {'soup':>12} {float(row.soup_unbiased_accuracy):>9.4f} "
                   f"{float(row.soup_worst_group_accuracy):>11.4f} {float(row.soup_param_compressibility):>10.4f}")


@main.command("ls")
@click.argument("paths", nargs=-1, required=True)
def ls_cmd(paths):
    """List runs with status, iterations and headline numbers."""
    from ..viz.summary import run_table

    for line in run_table(paths):
        echo(line)


@main.command("figures")
@click.argument("paths", nargs=-1, required=True)
@click.option("-o", "--output", "outdir", default="figures", show_default=True, type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["png", "svg"]), default="png", show_default=True)
@click.option("--only", default=None, help="Comma-separated figure names (default: all).")
def figures_cmd(paths, outdir, fmt, only):
    """Static figures for a manuscript (matplotlib backend), one file per figure and dataset x model."""
    from ..viz.static import write_figures
    from .common import check_out_dir

    names = [n.strip() for n in only.split(",") if n.strip()] if only is not None else None
    if names is not None and not names:
        raise LrscopeError(f"--only: no figure names in {only!r}")
    check_out_dir(outdir, "--output")
    for path in write_figures(paths, outdir, fmt=fmt, names=names):
        echo(str(path))


@main.command("report")
@click.argument("paths", nargs=-1, required=True)
@click.option("-o", "--output", default="report.html", show_default=True, type=click.Path(dir_okay=False))
@click.option("--title", default="lrscope report", show_default=True)
@click.option("--compute/--no-compute", default=True, show_default=True,
              help="Compute missing or stale probes first.")
@click.option("--allow-changed-plugins", is_flag=True,
              help="Rebuild a plugin model whose source (sha256 of its module file) changed since the run was "
                   "trained; without it such a run is refused before anything is computed.")
def report_cmd(paths, output, title, compute, allow_changed_plugins):
    """Write a self-contained HTML report (opens with no network) for a sweep."""
    from ..store.reader import find_runs
    from ..viz.report import write_report
    from .common import check_out_file

    check_out_file(output)
    find_runs(paths)  # no store: nothing is computed or written
    if compute:
        from ..probe.runner import compute_paths

        compute_paths(paths, progress=False, allow_changed_plugins=allow_changed_plugins)
    out = write_report(paths, output, title=title)
    echo(f"report written: {out.resolve()}")


@main.command("serve")
@click.argument("paths", nargs=-1, required=True)
@click.option("--port", type=click.IntRange(0, 65535), default=5006, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--live", is_flag=True, help="Re-read runs that are still training every 5 s.")
@click.option("--show", is_flag=True, help="Open the page in the default browser.")
@click.option("--allow-changed-plugins", is_flag=True,
              help="Per-sample attributions rebuild a plugin model whose source changed since training.")
def serve_cmd(paths, port, address, live, show, allow_changed_plugins):
    """Explore sweeps interactively in the browser (Panel/Bokeh server): metrics against the LR,
    the representation through training, training curves, data maps and per-sample trajectories.

    \b
    Example:
      lrprobe serve demo/runs            # then open http://127.0.0.1:5006/
      lrprobe serve runs/ --live         # follows runs that are still training
    """
    from ..store.reader import find_runs
    from ..viz.app import serve
    from .common import check_address

    check_address(address)
    find_runs(paths)  # a path without runs: the one-line error, before the server starts
    if port == 0:
        import socket

        try:
            with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
                s.bind((address, 0))
                port = s.getsockname()[1]
        except OSError as e:
            raise LrscopeError(f"--address {address}: cannot listen there ({e.strerror or e}); use an address "
                               "of this machine, such as 127.0.0.1") from None
    serve(list(paths), port=port, address=address, live=live, show=show, allow_changed_plugins=allow_changed_plugins)
