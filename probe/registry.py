"""The probe registry: every probe's declaration (probe/declare.py), gathered from the probe
modules (`PROBE_MODULES`, each declaring its probes once with ``@probe``) and from plugins (entry
points in the group lrscope.probes). `lrprobe list` prints the entries, `lrprobe compute` runs
their functions (probe/runner.py) with the options their parameters make (cli/probe.py), `lrprobe
ls` and the report show their headline variables, open_sweep describes their variables. The
probe modules import xarray and torch inside their functions, so this module loads without them
(`lrprobe list` answers at once).
"""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import LrscopeError
from .declare import DECLARED, PROBE_FORMAT, Headline, Param, ProbeEntry  # noqa: F401 - the plugins' names

# The registry's order (`lrprobe list`, the compute order, the report's headline rows) of the
# modules in probe/probes/ that declare probes; a module not named here (a new probe) is found in
# that folder and follows them, in alphabetical order: adding a probe touches its module and its test.
ORDER = ("accuracy", "representation", "pruning", "importance", "attributions", "subnetworks", "resets",
         "selection", "stall", "dynamics")
_FOUND = sorted(m.name for m in pkgutil.iter_modules(importlib.import_module(".probes", __package__).__path__)
                if not m.name.startswith("_"))
PROBE_MODULES = tuple([m for m in ORDER if m in _FOUND] + [m for m in _FOUND if m not in ORDER])
for _module in PROBE_MODULES:
    importlib.import_module(f".probes.{_module}", __package__)

PROBES: dict[str, ProbeEntry] = {e.name: e for e in DECLARED}
BUILT_IN = tuple(PROBES)


def _param_decls(entries) -> dict[str, Param]:
    """name -> Param over `entries`; TypeError where two probes declare one name differently (a
    shared parameter is one Param object, imported by the second module)."""
    out: dict[str, Param] = {}
    for e in entries:
        for k, p in e.params.items():
            if k in out and out[k] != p:
                raise TypeError(f"probe {e.name}: parameter {k!r} is declared differently by another probe")
            out[k] = p
    return out


def _variable_owners(entries) -> dict[str, str]:
    owner: dict[str, str] = {}
    for e in entries:
        for v in (*e.variables, *e.coords):
            if v in owner and owner[v] != e.name and v not in e.coords:
                raise TypeError(f"probe {e.name}: variable {v!r} is declared by probe {owner[v]!r} too")
            owner.setdefault(v, e.name)
    return owner


PARAM_DECLS = _param_decls(PROBES.values())
_variable_owners(PROBES.values())


def _plugin_probes() -> tuple[dict[str, ProbeEntry], dict[str, str]]:
    """The probes installed distributions declare (entry points in the group lrscope.probes, each a
    ProbeEntry), marked with their distribution; and the entry points that could not be loaded
    (name -> one-line reason), which `lrprobe list` shows."""
    import dataclasses

    from ..train.plugins import distribution_of, listed

    out, broken = {}, {}
    for ep, e, error in listed("probe"):
        if error is None and (e.name in PROBES or e.name in out):
            error = f"plugin probe {ep.value}: its name {e.name!r} is taken by another probe"
        if error is None:
            try:
                _param_decls([*PROBES.values(), *out.values(), e])
            except TypeError as err:
                error = f"plugin probe {ep.value}: {err}"
        if error is not None:
            broken[ep.name] = error
            continue
        dist, version = distribution_of(ep)
        out[e.name] = dataclasses.replace(e, plugin=f"{dist or 'an unknown distribution'} {version or ''}".rstrip())
    return out, broken


PLUGIN_PROBES, BROKEN_PLUGINS = _plugin_probes()
PROBES.update(PLUGIN_PROBES)
PARAM_DECLS = _param_decls(PROBES.values())
PARAMS = set(PARAM_DECLS)  # what `compute_run(params=...)` accepts
DEFAULT_PROBES = [name for name, e in PROBES.items() if e.default]  # what `lrprobe compute` runs unasked


def headlines() -> list[Headline]:
    """Every probe's headline variables, in the registry's order."""
    return [h for e in PROBES.values() for h in e.headline]


def per_run_coords() -> list[str]:
    """The probes' per-run coordinates (open_sweep gives them the `run` dimension)."""
    return [c for e in PROBES.values() for c in e.coords]


def describe(name: str) -> dict[str, str] | None:
    """The attrs a probe declares for its variable (or coordinate) `name`: in its `variables`
    (and `<v>_final` of such a `v`), or made by its `describe` for a pattern-made name; None if
    no probe does."""
    for e in PROBES.values():
        if name in e.variables:
            return dict(e.variables[name])
        base = name.removesuffix("_final")
        if base != name and base in e.variables:
            d = e.variables[base]
            return {**d, "long_name": f"{d['long_name']} (final)",
                    "description": f"{base} at the run's final snapshot ({base}: {d['description']})"}
        d = e.describe(name) if e.describe is not None else None
        if d is not None:
            return dict(d)
    return None


def check_names(names) -> list[str]:
    """The probes to compute: `names`, or every default probe (specialist ones, such as
    neuron_resets, are computed only when asked for by name)."""
    names = list(DEFAULT_PROBES) if names is None else list(names)
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        raise LrscopeError(f"unknown probe(s) {', '.join(unknown)}; valid: {', '.join(PROBES)}")
    return names


def check_params(params) -> dict:
    """Probe parameters checked against their declarations before any probe runs (a bad one must
    not leave the others rewritten), and the rules across a probe's parameters."""
    params = dict(params or {})
    unknown = set(params) - PARAMS
    if unknown:
        raise LrscopeError(f"unknown probe parameter(s) {', '.join(sorted(unknown))}; "
                           f"valid: {', '.join(sorted(PARAMS))}")
    for k, v in params.items():
        if PARAM_DECLS[k].default is not None or PARAM_DECLS[k].kind is not None:  # else: an older plugin's
            PARAM_DECLS[k].validate(k, v)
    for e in PROBES.values():
        if e.check is not None and set(params) & set(e.params):
            e.check(params)
    return params


def check_runs(runs, names, params: dict) -> None:
    """The asked probes' checks against the runs (e.g. checkpoint positions), before anything is
    computed."""
    for n in names:
        if PROBES[n].check_runs is not None:
            PROBES[n].check_runs(runs, params)
