"""Where a store may be written: never inside another store, nor inside any Zarr hierarchy.

A run written inside another run's folder (``--out runs/<run>.zarr``) turns that run's group into
a parent of a foreign group: every reader then refuses the *existing* run. So every output path
of lrscope (a run's ``--out``, a sweep's, a report's or figures' folder) is checked first: neither
it nor any folder above it may be a Zarr node (a ``zarr.json`` of Zarr v3, a ``.zgroup`` or
``.zarray`` of v2). The check follows symbolic links (a link to a store's group is inside it).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import StoreError

ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")


def _resolved(path) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _is_run_store(node: Path) -> bool:
    import json

    try:
        with open(node / "zarr.json", "rb") as f:
            meta = json.loads(f.read(1 << 20))
        return isinstance(meta, dict) and isinstance(meta.get("attributes"), dict) \
            and meta["attributes"].get("lrscope") == "run"
    except (OSError, ValueError):
        return False


def zarr_node_at_or_above(path: str | os.PathLike) -> Path | None:
    """The folder at or above `path` (resolved; the path need not exist yet) that makes it part of
    a Zarr hierarchy: the run store it is in if any, else the outermost Zarr node; None if none."""
    nodes = []
    for d in (p := _resolved(path), *p.parents):
        try:
            if any((d / m).is_file() for m in ZARR_MARKERS):
                nodes.append(d)
        except OSError:  # unreadable or over-long component: not a store we can see
            continue
    runs = [d for d in nodes if _is_run_store(d)]
    return runs[0] if runs else (nodes[-1] if nodes else None)


def check_not_in_store(path: str | os.PathLike, name: str = "--out") -> None:
    """StoreError when `path` is, or lies inside, a run store or any Zarr hierarchy."""
    node = zarr_node_at_or_above(path)
    if node is None:
        return
    what = "the run store" if _is_run_store(node) else "the Zarr hierarchy"
    where = "is" if node == _resolved(path) else "lies inside"
    raise StoreError(f"{name} {os.fspath(path)} {where} {what} {node}; stores are written beside each other, "
                     f"never inside one (e.g. {name} {node.parent})")
