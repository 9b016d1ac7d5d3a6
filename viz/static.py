"""Static figures (PNG/SVG) from the same builders as the report, through HoloViews' matplotlib
backend: what goes into a manuscript."""

from __future__ import annotations

from pathlib import Path

import holoviews as hv

from ..errors import LrscopeError
from ..store.reader import open_sweep
from . import figures as F
from .report import sections_for


def write_figures(paths, outdir, *, fmt: str = "png", names=None) -> list[Path]:
    names = list(F.FIGURES) if names is None else list(names)
    unknown = [n for n in names if n not in F.FIGURES]
    if unknown:
        raise LrscopeError(f"unknown figure(s) {', '.join(unknown)}; valid: {', '.join(F.FIGURES)}")
    out = Path(outdir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LrscopeError(f"cannot create {out}: {e.strerror}") from None
    # the builders set bokeh-style options (the report's backend, kept current); matplotlib
    # renders with its own defaults for those
    hv.extension("bokeh", "matplotlib", logo=False)
    written = []
    for (dname, model), runs in sections_for(paths).items():
        sw = open_sweep(runs)
        for name in names:
            fig = F.FIGURES[name](sw)
            path = out / f"{dname}-{model}-{name}.{fmt}"
            if isinstance(fig, hv.Table):
                path = path.with_suffix(".csv")
                fig.dframe().to_csv(path, index=False)
            else:
                hv.save(fig, str(path), fmt=fmt, backend="matplotlib")
            written.append(path)
    return written
