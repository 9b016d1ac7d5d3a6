"""Comparing two run stores bit for bit: every array's dtype, shape and bytes, and the attributes
of every group and array. Used to check that an execution detail (the data placement, a resume)
did not change what a run computed."""

from __future__ import annotations

import os

import numpy as np
import zarr

# what legitimately differs between two stores of one run: when and how fast it ran, where its
# data lived (and the placement asked for, an execution detail in the config)
EXECUTION_ATTRS = ("timings", "data_placement", "created")
EXECUTION_CONFIG = ("data_placement",)


def contents(path: str | os.PathLike, ignore_attrs=EXECUTION_ATTRS, ignore_config=EXECUTION_CONFIG
             ) -> tuple[dict, dict]:
    """(attributes of every group and array, (dtype, shape, bytes) of every array) of a store,
    less the root attributes `ignore_attrs` and the config fields `ignore_config`."""
    root = zarr.open_group(str(path), mode="r")
    attrs: dict = {}
    arrays: dict = {}

    def walk(g, prefix):
        attrs[prefix or "/"] = g.attrs.asdict()
        for name, a in g.arrays():
            v = np.asarray(a[...])
            arrays[f"{prefix}/{name}"] = (v.dtype.str, v.shape, v.tobytes())
            attrs[f"{prefix}/{name}"] = a.attrs.asdict()
        for name, sub in g.groups():
            walk(sub, f"{prefix}/{name}")

    walk(root, "")
    top = attrs["/"]
    for k in ignore_attrs:
        top.pop(k, None)
    if isinstance(top.get("config"), dict):
        top["config"] = {k: v for k, v in top["config"].items() if k not in ignore_config}
    return attrs, arrays


def differences(a: str | os.PathLike, b: str | os.PathLike, **kw) -> list[str]:
    """What differs between stores `a` and `b` (empty: bitwise equal but for the execution details)."""
    attrs_a, arrays_a = contents(a, **kw)
    attrs_b, arrays_b = contents(b, **kw)
    out = []
    for k in sorted(set(attrs_a) | set(attrs_b)):
        if attrs_a.get(k) != attrs_b.get(k):
            keys = sorted({*(attrs_a.get(k) or {}), *(attrs_b.get(k) or {})})
            which = [n for n in keys if (attrs_a.get(k) or {}).get(n) != (attrs_b.get(k) or {}).get(n)]
            out.append(f"attributes of {k}: {', '.join(which)}")
    for k in sorted(set(arrays_a) | set(arrays_b)):
        if k not in arrays_a or k not in arrays_b:
            out.append(f"array {k}: only in {'b' if k not in arrays_a else 'a'}")
        elif arrays_a[k] != arrays_b[k]:
            out.append(f"array {k}")
    return out
