"""Text summaries of runs: the rows of `lrprobe ls` and of the report's run list."""

from __future__ import annotations

import math

from ..probe.registry import headlines
from ..store import schema as S
from ..store.reader import find_runs, lock_held, open_run

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
        row = {"run_id": ds.attrs["run_id"], "status": status, "reason": ds.attrs["reason"],
               "dataset": cfg["dataset"], "model": cfg["model"], "lr": cfg["lr"], "seed": cfg["seed"],
               "iterations": int(ds.sizes.get("iteration", 0)), "path": str(p),
               "has_bias": bool(ds.attrs.get(S.ATTR_HAS_BIAS, True)),
               "data": ds.attrs.get("model_info", {}).get("dataset_description", "")}
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
    return out
