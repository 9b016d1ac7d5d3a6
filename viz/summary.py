"""Text summaries of runs: the rows of `lrprobe ls` and of the report's run list."""

from __future__ import annotations

import math

from ..probe.registry import headlines
from ..store import schema as S
from ..store.reader import find_runs, lock_held, open_run, sweep_key

HEAD = [(h.var, h.short) for h in headlines() if h.short]  # declared with their probes (probe/registry.py)


def run_rows(paths) -> list[dict]:
    rows = []
    for p in find_runs(paths):
        ds = open_run(p)
        cfg = ds.attrs["config"]
        status = ds.attrs["status"]
        if status == S.STATUS_RUNNING and not lock_held(p):  # no process trains it: re-run to resume
            status = "interrupted"
        elif status == S.STATUS_COMPLETED and ds.attrs.get("stop_criterion_met") is False:
            status = "max_steps"  # completed, but its stop criterion never held (the reason says how far)
        if status in (S.STATUS_COMPLETED, "max_steps") and "stalled" in ds and bool(ds["stalled"]):
            status = "stalled"  # the stall probe's flag: a long plateau with many dead units (probe/stall.py)
        row = {"run_id": ds.attrs["run_id"], "status": status, "reason": ds.attrs["reason"],
               "dataset": cfg["dataset"], "model": cfg["model"], "sweep": sweep_key(cfg), "lr": cfg["lr"],
               "seed": cfg["seed"],
               "iterations": int(ds.sizes.get("iteration", 0)), "path": str(p),
               "has_bias": bool(ds.attrs.get(S.ATTR_HAS_BIAS, True)),
               "data": ds.attrs.get("model_info", {}).get("dataset_description", ""),
               "plugins": ds.attrs.get(S.ATTR_PLUGINS) or {}, "features_at": cfg.get("features_at")}
        for var, _ in HEAD:
            row[var] = float(ds[var]) if var in ds and ds[var].ndim == 0 else math.nan
        rows.append(row)
    return rows


def run_table(paths) -> list[str]:
    rows = run_rows(paths)
    width = max([len(r["run_id"]) for r in rows] + [6])
    head = f"{'run':{width}s}  {'status':11s} {'iters':>6s} " + " ".join(f"{h:>7s}" for _, h in HEAD)
    out = [head]
    for r in rows:
        vals = " ".join("      -" if math.isnan(r[v]) else f"{r[v]:7.3f}" for v, _ in HEAD)
        out.append(f"{r['run_id']:{width}s}  {r['status']:11s} {r['iterations']:6d} {vals}")
    notes = [f"  {r['run_id']}: {note}" for r in rows for note in plugin_notes(r)]
    if notes:
        out += ["plugins (the probes that run the network: pruning, attributions, neuron_resets):", *notes]
    return out


def plugin_notes(row: dict) -> list[str]:
    """What `lrprobe ls` says of a run's plugins: where each comes from and whether the probes that
    run the network can rebuild it in this process (importable, and unchanged since training)."""
    from ..errors import PluginChanged, PluginError
    from ..train.plugins import verify

    out = []
    for kind, rec in sorted(row["plugins"].items()):
        if not isinstance(rec, dict):
            continue
        where = ", ".join(str(x) for x in (rec.get("distribution"), rec.get("version")) if x) or "not a distribution"
        at = f", features at {row['features_at']}" if kind == "model" and row.get("features_at") else ""
        try:
            verify(rec, kind)
            state = "importable here, unchanged"
        except PluginChanged:
            state = ("its source changed since training (sha256 differs): refused without --allow-changed-plugins"
                     if kind == "model" else "its source changed since training: its test split is not rebuilt")
        except PluginError:
            state = ("not importable here: the probes that run the network are not defined, the others are "
                     "computed from the stored arrays" if kind == "model"
                     else "not importable here: its test split is not rebuilt (pruning evaluates the probe subset)")
        out.append(f"plugin {kind} {rec.get('import_path')} ({where}{at}): {state}")
    return out
