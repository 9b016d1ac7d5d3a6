"""The self-contained HTML report: bokeh resources inlined, so it opens with no network."""

from __future__ import annotations

import html
import math
import time
from collections import defaultdict
from pathlib import Path

import holoviews as hv
from bokeh.embed import file_html
from bokeh.layouts import column
from bokeh.models import Div, InlineStyleSheet
from bokeh.resources import INLINE

from .. import __version__
from ..errors import LrscopeError
from ..store.reader import open_sweep
from . import figures as F
from .summary import HEAD, run_rows

PLOT_OPTS = dict(width=760, height=360)


def _render(obj):
    """A figure as a bokeh model (layouts keep their panels' own sizes)."""
    import param

    if not isinstance(obj, hv.Layout):
        obj = obj.opts(**PLOT_OPTS)
    with param.logging_level("ERROR"):  # bokeh's notes on log axes touching 0 are noise on stderr
        return hv.render(obj, backend="bokeh")


def _table_html(headers, rows, flag=None) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    trs = []
    for r in rows:
        style = ' style="background:#fde2e2"' if flag and flag(r) else ""
        trs.append(f"<tr{style}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>")
    return f'<table class="lr"><thead><tr>{th}</tr></thead><tbody>{"".join(trs)}</tbody></table>'


CSS = """
table.lr{border-collapse:collapse;font:13px sans-serif} table.lr td,table.lr th{border:1px solid #ccc;padding:3px 8px}
table.lr th{background:#f0f0f0} h1,h2,h3{font-family:sans-serif} p{font:14px sans-serif}
"""


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def sections_for(paths) -> dict[tuple[str, str], list[Path]]:
    groups: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for r in run_rows(paths):
        groups[(r["dataset"], r["model"])].append(Path(r["path"]))
    return dict(groups)


SUMMARY_COLUMNS = ["dataset", "model", "metric", "learning rate", "value", "with the LR"]


def summary_rows(sweeps: dict) -> list[tuple]:
    """The report's summary: for each (dataset, model) sweep and headline metric, the seed means at
    the smallest and largest non-diverged LR and which way the metric goes with the LR."""
    rows = []
    for (dname, model), sw in sweeps.items():
        lrs = F.lr_values(sw)
        for var, label in F.HEADLINE:
            if var in sw and len(lrs):
                _, mean, _ = F.per_lr(sw, var)
                rho, word = F.trend(lrs, mean)
                arrow = {"rises": "↑ ", "falls": "↓ "}.get(word, "")
                rows.append((dname, model, label, f"{lrs[0]:g} → {lrs[-1]:g}", f"{_fmt(mean[0])} → {_fmt(mean[-1])}",
                             arrow + word + ("" if math.isnan(rho) else f" (ρ = {rho:+.2f})")))
    return rows


def write_report(paths, output, *, title: str = "lrscope report") -> Path:
    out = Path(output)
    if out.is_dir():
        raise LrscopeError(f"{out} is a folder; give the report's file name")
    rows = run_rows(paths)  # the runs first: no run, no folder
    hv.extension("bokeh", logo=False)
    n_div = sum(r["status"] == "diverged" for r in rows)
    # each bokeh Div renders in its own shadow DOM: every one carries the report's style sheet
    sheet = InlineStyleSheet(css=CSS)

    def div(text: str) -> Div:
        return Div(text=text, stylesheets=[sheet])

    blocks = [div(f"<h1>{html.escape(title)}</h1><p>{len(rows)} runs, {n_div} diverged · "
                  f"lrscope {__version__} · {time.strftime('%Y-%m-%d %H:%M')}</p>")]
    # summary: headline numbers per dataset x model, then the run list
    groups = sections_for(paths)
    sweeps = {key: open_sweep(runs) for key, runs in groups.items()}
    blocks.append(div("<h2>Summary</h2><p>Seed means at the smallest and largest learning rate "
                      "that did not diverge; with the LR: Spearman's ρ between the learning rate and the seed "
                      "means. Prunability is the paper's retention ratio, mean over κ of Acc(f^κ)/Acc(f); mean "
                      "pruned accuracy is the mean of Acc(f^κ) itself, the scale the paper's parity row lies "
                      "on.</p>" + _table_html(
                          SUMMARY_COLUMNS, summary_rows(sweeps))))
    run_list = [(r["run_id"], r["status"], r["lr"], r["seed"], r["iterations"],
                 *(_fmt(r[v]) for v, _ in HEAD), r["reason"]) for r in rows]
    blocks.append(div("<h3>Runs</h3>" + _table_html(
        ["run", "status", "lr", "seed", "iterations", *(h for _, h in HEAD), "reason"], run_list,
        flag=lambda r: r[1] != "completed")))
    for (dname, model), sw in sweeps.items():
        blocks.append(div(f"<h2>{html.escape(dname)} · {html.escape(model)}</h2>"))
        for entry in F.FIGURES.values():  # each figure's title and condition declared in viz/figures.py
            if entry.applies is not None and not entry.applies(sw):
                continue
            fig, heading = entry(sw), html.escape(entry.title)
            if isinstance(fig, hv.Table):
                blocks.append(div(f"<h3>{heading}</h3>" + _table_html(
                    [d.name for d in fig.dimensions()], [tuple(r) for r in fig.data.itertuples(index=False)]
                    if hasattr(fig.data, "itertuples") else fig.data)))
            else:
                blocks.append(div(f"<h3>{heading}</h3>"))
                blocks.append(_render(fig))
    doc = column(*blocks)
    write_text(out, file_html(doc, INLINE, title))
    return out


def write_text(out: Path, text: str) -> None:
    """Write a file whole or not at all: a regular file through a temporary sibling and a rename
    (a full disk leaves the old file, or none); a device or pipe (/dev/stdout) directly. Any
    OSError is a one-line LrscopeError."""
    import os

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LrscopeError(f"cannot create {out.parent}: {e.strerror or e}") from None
    data = text.encode("utf-8")
    if out.exists() and not out.is_file():  # a device, a pipe: no rename over it
        try:
            with open(out, "wb") as f:
                f.write(data)
        except OSError as e:
            raise LrscopeError(f"cannot write {out}: {e.strerror or e}") from None
        return
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise LrscopeError(f"cannot write {out}: {e.strerror or e}") from None
