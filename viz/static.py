"""Static figures (PNG/SVG) from the same builders as the report, through HoloViews' matplotlib
backend: what goes into a manuscript."""

from __future__ import annotations

from pathlib import Path

import holoviews as hv

from ..errors import LrscopeError
from ..store.reader import open_sweep
from . import figures as F
from .report import sections_for

_LINESTYLE = {"dashed": "--", "dotted": ":", "dashdot": "-.", "solid": "-"}


def _matplotlib_look(fig):
    """Carry the builders' bokeh options that matter on paper (log axes, per-curve colours and
    dashes, axis limits) over to the matplotlib backend, element by element."""
    def apply(el):
        plot = hv.Store.lookup_options("bokeh", el, "plot").kwargs
        style = hv.Store.lookup_options("bokeh", el, "style").kwargs
        kw = {k: plot[k] for k in ("logx", "logy", "xlim", "ylim") if k in plot}
        if isinstance(style.get("color"), str):
            kw["color"] = style["color"]
        if isinstance(style.get("line_dash"), str):
            kw["linestyle"] = _LINESTYLE.get(style["line_dash"], "-")
        return el.opts(backend="matplotlib", **kw) if kw else el

    def tidy_axes(plot, element):  # no labels on minor log ticks (they collide on short ranges)
        from matplotlib.ticker import NullFormatter

        ax = plot.handles["axis"]
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())

    def frame(ov):
        return ov.opts(backend="matplotlib", aspect=1.6, fig_inches=8, legend_position="right",
                       hooks=[tidy_axes])

    fig = fig.map(apply, hv.Element)
    return fig.map(frame, hv.Overlay) if not isinstance(fig, hv.Element) else fig


def write_figures(paths, outdir, *, fmt: str = "png", names=None) -> list[Path]:
    names = list(F.FIGURES) if names is None else list(names)
    unknown = [n for n in names if n not in F.FIGURES]
    if unknown:
        raise LrscopeError(f"unknown figure(s) {', '.join(unknown)}; valid: {', '.join(F.FIGURES)}")
    out = Path(outdir)
    sections = sections_for(paths)  # the runs first: no run, no folder
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LrscopeError(f"cannot create {out}: {e.strerror or e}") from None
    fresh: list[Path] = []  # files this call created (not those it overwrote)
    try:
        return _write_all(sections, out, fmt, names, fresh)
    except BaseException:  # a damaged store read lazily, a full disk, Ctrl-C: what this call created goes
        for path in fresh:
            path.unlink(missing_ok=True)
        if created:
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise


def _write_all(sections, out: Path, fmt: str, names, fresh: list[Path]) -> list[Path]:
    # the builders set bokeh-style options (the report's backend, kept current); matplotlib
    # renders with its own defaults for those
    hv.extension("bokeh", "matplotlib", logo=False)
    written = []
    for (dname, model), runs in sections.items():
        sw = open_sweep(runs)
        for name in names:
            fig = F.FIGURES[name](sw)
            path = out / f"{dname}-{model}-{name}.{fmt}"
            if isinstance(fig, hv.Table):
                path = path.with_suffix(".csv")
            if not path.exists():
                fresh.append(path)
            try:
                if isinstance(fig, hv.Table):
                    fig.dframe().to_csv(path, index=False)
                else:
                    hv.save(_matplotlib_look(fig), str(path), fmt=fmt, backend="matplotlib")
            except OSError as e:
                raise LrscopeError(f"cannot write {path}: {e.strerror or e}") from None
            written.append(path)
    return written
