"""The self-contained HTML report: one HTML page of our own (a table of contents, headings and
tables in the page itself) with the figures embedded by bokeh's `components` and bokeh's own
JavaScript inlined — nothing else is loaded, so it opens offline with no failed request."""

from __future__ import annotations

import html
import math
import re
import time
from pathlib import Path

import holoviews as hv

from .. import __version__
from ..errors import LrscopeError
from ..store.reader import group_sweeps, open_sweep
from . import figures as F
from .summary import HEAD, run_rows

HEIGHT = 360  # figures take the page's width; layouts keep their panels' heights


def _render(obj):
    """A figure as a bokeh model that takes the page's width."""
    import param

    if isinstance(obj, hv.Layout):
        obj = obj.opts(hv.opts.Layout(sizing_mode="stretch_width"))
    else:
        obj = obj.opts(responsive=True, height=HEIGHT)
    with param.logging_level("ERROR"):  # bokeh's notes on log axes touching 0 are noise on stderr
        model = hv.render(obj, backend="bokeh")
    model.sizing_mode = "stretch_width"
    return model


def _table_html(headers, rows, flag=None) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    trs = []
    for r in rows:
        style = ' style="background:#fde2e2"' if flag and flag(r) else ""
        trs.append(f"<tr{style}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>")
    return f'<table class="lr"><thead><tr>{th}</tr></thead><tbody>{"".join(trs)}</tbody></table>'


CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#222}
nav.toc{position:fixed;top:0;left:0;bottom:0;width:250px;overflow:auto;background:#f6f6f6;border-right:1px solid #ddd;
  padding:12px 10px;font-size:13px} nav.toc a{color:#234;text-decoration:none}
nav.toc ul{padding-left:14px;margin:2px 0}
nav.toc li{margin:2px 0} main{margin-left:280px;padding:8px 24px 60px 8px;max-width:1600px}
h1{margin:10px 0 4px} h2{border-bottom:2px solid #ccc;padding-bottom:3px;margin-top:34px}
h3{margin:22px 0 6px} h4{margin:16px 0 4px;color:#444} p.note{color:#555;max-width:1100px}
table.lr{border-collapse:collapse;font-size:13px;margin:6px 0} table.lr td,table.lr th{border:1px solid #ccc;
  padding:3px 8px} table.lr th{background:#f0f0f0} .fig{width:100%;margin:4px 0 14px}
@media (max-width:900px){nav.toc{display:none} main{margin-left:0}}
"""


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def sections_for(paths) -> dict[tuple[str, str], list[Path]]:
    """The report's sections, one per sweep (`group_sweeps`: the report's, the figures' and the
    explorer's one grouping): (dataset, model) -> its run stores."""
    return {key: [p for p, _ in runs] for key, runs in group_sweeps(paths).items()}


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
                if len(lrs) == 1:  # one learning rate: its value, and no direction to speak of
                    rows.append((dname, model, label, f"{lrs[0]:g}", _fmt(mean[0]), "one LR: -"))
                    continue
                rho, word = F.trend(lrs, mean)
                arrow = {"rises": "↑ ", "falls": "↓ "}.get(word, "")
                rows.append((dname, model, label, f"{lrs[0]:g} → {lrs[-1]:g}", f"{_fmt(mean[0])} → {_fmt(mean[-1])}",
                             arrow + word + ("" if math.isnan(rho) else f" (ρ = {rho:+.2f})")))
    return rows


def _slug(text: str, used: set) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "s"
    slug, i = base, 1
    while slug in used:
        i += 1
        slug = f"{base}-{i}"
    used.add(slug)
    return slug


def _table_of(fig: hv.Table) -> str:
    return _table_html([d.name for d in fig.dimensions()], [tuple(r) for r in fig.data.itertuples(index=False)]
                       if hasattr(fig.data, "itertuples") else fig.data)


def _bokeh_js(resources) -> str:
    """Bokeh's own JavaScript, inlined: `render_js()` would also add the script tags that other
    packages register with bokeh (Panel's ES-module shim, a relative URL that fails offline)."""
    parts = [js for js in resources.js_raw if "BEGIN bokeh-mathjax" not in js[:80]]  # no LaTeX in our plots
    return "".join(f"<script>{js}</script>" for js in parts)


SELECTION_COLUMNS = ["criterion", "picked run", "lr", "iteration", "criterion value", "test unbiased acc.",
                     "test worst-group acc.", "gap to oracle", "degenerate", "not defined"]


def selection_html(sw) -> str:
    """The sweep's model-selection table (probe/selection.py: `selection_table`): for each criterion
    the run and snapshot it picks and the pick's test accuracies; a note where the selection probe
    has not been computed."""
    from ..probe.metrics import MetricError
    from ..probe.selection import CRITERIA, selection_table

    try:
        t = selection_table(sw)
    except MetricError as e:
        return f"<p class=note>{html.escape(str(e))}</p>"
    rows = []
    for i, c in enumerate(t.criterion.values):
        r = t.isel(criterion=i)
        defined = not str(r.not_defined.values)
        rows.append((CRITERIA[str(c)][1], str(r.selected_run.values) or "-",
                     f"{float(r.selected_lr):g}" if defined else "-",
                     int(r.selected_iteration) if defined else "-", _fmt(float(r.selection_score)),
                     _fmt(float(r.selected_test_unbiased_accuracy)), _fmt(float(r.selected_test_worst_group_accuracy)),
                     _fmt(float(r.gap_to_oracle)), "yes" if bool(r.selected_degenerate) else "",
                     str(r.not_defined.values)))
    note = ("<p class=note>Which run and snapshot each criterion would pick among every full snapshot of the sweep's "
            "runs, and the pick's accuracy on the test split (ties: the first run, then the earliest snapshot). The "
            "oracle reads the test labels: the best any criterion can do. Validation criteria read the run's "
            "validation split (the dataset's own, or val_fraction of the training pool, with its bias-conflicting "
            "share); worst-class and average accuracy need no group labels. Gap to oracle: the pick's test "
            "worst-group accuracy minus the oracle's. Degenerate: the pick predicts one class on the whole test "
            "split.")
    if t.attrs.get("degenerate_runs"):
        note += f" Runs that end predicting one class everywhere: {html.escape(t.attrs['degenerate_runs'])}."
    return note + "</p>" + _table_html(SELECTION_COLUMNS, rows, flag=lambda r: r[8] == "yes")


def write_report(paths, output, *, title: str = "lrscope report") -> Path:
    """Write the report of the runs under `paths` to `output` (one self-contained HTML file)."""
    from bokeh.embed import components
    from bokeh.resources import INLINE

    out = Path(output)
    if out.is_dir():
        raise LrscopeError(f"{out} is a folder; give the report's file name")
    rows = run_rows(paths)  # the runs first: no run, no folder
    hv.extension("bokeh", logo=False)
    n_div = sum(r["status"] == "diverged" for r in rows)
    n_max = sum(r["status"] == "max_steps" for r in rows)  # ended by max_steps before their stop criterion
    n_stalled = sum(r["status"] == "stalled" for r in rows)  # the stall probe's flag (probe/stall.py)
    sweeps = {key: open_sweep(runs) for key, runs in sections_for(paths).items()}
    used: set[str] = set()
    toc: list[tuple[int, str, str]] = []  # (level, anchor, text)
    body: list[str] = []
    models = []

    def heading(level: int, text: str) -> None:
        anchor = _slug(text, used)
        toc.append((level, anchor, text))
        body.append(f'<h{level} id="{anchor}">{html.escape(text)}</h{level}>')

    def figure(fig) -> None:
        if isinstance(fig, hv.Layout) and len(fig) == 0:  # nothing to draw (no completed run, say)
            body.append("<p class=note>nothing to draw for these runs</p>")
            return
        models.append(_render(fig))
        body.append(f"<div class=\"fig\">{{{{FIG{len(models) - 1}}}}}</div>")

    heading(2, "Summary")
    body.append("<p class=note>Seed means at the smallest and largest learning rate that did not diverge; with "
                "the LR: Spearman's ρ between the learning rate and the seed means (a sweep of one learning rate "
                "has no direction). Prunability is the paper's κ-prunability: the mean over κ of the retention ratio "
                "Acc(f^κ)/Acc(f), not clipped (it exceeds 1 where pruning helps). Mean pruned accuracy, the mean of "
                "Acc(f^κ) itself, is a view of ours, not the paper's quantity. Average accuracy weights the test "
                "groups by the training groups' sizes (Waterbirds/CelebA papers' convention); unbiased accuracy is "
                "the paper's.</p>")
    body.append(_table_html(SUMMARY_COLUMNS, summary_rows(sweeps)))
    heading(3, "Runs")
    run_list = [(r["run_id"], r["status"], r["lr"], r["seed"], r["iterations"],
                 *(_fmt(r[v]) for v, _ in HEAD), r["reason"]) for r in rows]
    body.append(_table_html(["run", "status", "lr", "seed", "iterations", *(h for _, h in HEAD), "reason"], run_list,
                            flag=lambda r: r[1] != "completed"))
    for (dname, model), sw in sweeps.items():
        n_lr = len(F.lr_values(sw))
        heading(2, f"{dname} · {model}")
        body.append(f"<p class=note>{sw.sizes['run']} runs, {n_lr} learning rate(s)"
                    + ("" if n_lr > 1 else ": the figures against the LR need two; what follows shows the run(s) "
                       "through training") + ".</p>")
        no_bias = [r for r in rows if r["sweep"] == (dname, model) and not r["has_bias"]]
        if no_bias:
            body.append(f"<p class=note>{len(no_bias)} of these runs' data have no bias attribute"
                        + (f" ({html.escape(no_bias[0]['data'])})" if no_bias[0]["data"] else "")
                        + ": the probes that need one (worst-group, average and bias-aligned/-conflicting accuracy, "
                        "the BC loss ratio, BSI and neuron survival, the spurious linear probe, the subnetwork "
                        "gradients) are not defined for them, and unbiased accuracy is the plain test accuracy.</p>")
        heading(3, f"Model selection — {dname} · {model}" if len(sweeps) > 1 else "Model selection")
        body.append(selection_html(sw))
        section = None
        for entry in F.FIGURES.values():  # titles, sections and conditions declared in viz/figures.py
            if entry.applies is not None and not entry.applies(sw):
                continue
            if entry.section != section:
                section = entry.section
                heading(3, f"{section} — {dname} · {model}" if len(sweeps) > 1 else section)
            fig = entry(sw)
            body.append(f"<h4>{html.escape(entry.title)}</h4>")
            if isinstance(fig, hv.Table):
                body.append(_table_of(fig))
            else:
                figure(fig)
    script, divs = components(models) if models else ("", [])
    page = "\n".join(body)
    for i, d in enumerate(divs):
        page = page.replace(f"{{{{FIG{i}}}}}", d)
    nav = ["<nav class=toc><b>Contents</b><ul>"]
    for level, anchor, text in toc:
        pad = "" if level == 2 else ' style="margin-left:12px"'
        nav.append(f'<li{pad}><a href="#{anchor}">{html.escape(text)}</a></li>')
    nav.append("</ul></nav>")
    doc = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
           f"<style>{CSS}</style>{_bokeh_js(INLINE)}</head><body>{''.join(nav)}<main>"
           f"<h1>{html.escape(title)}</h1><p>{len(rows)} runs, {n_div} diverged"
           + (f", {n_max} ended by max_steps before their stop criterion (see the run list)" if n_max else "")
           + (f", {n_stalled} stalled (a long training-accuracy plateau with many dead units; see the run list)"
              if n_stalled else "")
           + f" · lrscope {__version__} · "
           f"{time.strftime('%Y-%m-%d %H:%M')}</p>{page}</main>{script}</body></html>")
    write_text(out, doc)
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
