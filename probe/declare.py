"""How a probe is declared: once, in its module, as ``@probe(name, ...)`` on its function.

A declaration says everything about a probe that is not its computation: its parameters
(``param``: default, range or choices, help, as ``knob()`` declares a run field in
train/config.py), its output variables and their meaning (``var``: long_name, description,
units), its per-run coordinates, what it costs, on which samples, what it needs (the network
rebuilt from a checkpoint, a bias attribute) and its headline scalars. Everything else is derived:
the runner (probe/runner.py), parameter validation (`check_params`), `lrprobe compute`'s options
(cli/probe.py), `lrprobe list`, open_sweep's descriptions, the report's headline rows and the
declaration tests.

A probe module imports only this module (and the errors) at its top; numpy, xarray and torch
inside its functions (the registry must load without them: `lrprobe list` and `lrprobe compute
--help` answer at once; tests/test_declarations.py checks). probe/registry.py imports every
module of `PROBE_MODULES`.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..errors import LrscopeError

PROBE_FORMAT = 3  # bump when every probe's stored results must be recomputed


@dataclass(frozen=True)
class Param:
    """A probe parameter, declared once: `default`, `kind` (int, float, str, list; "path": a file,
    passed on as its absolute path), range (`lo`/`hi`, open ends) or `choices`, `help`, and
    `check` (a function raising LrscopeError for a value the range cannot judge, e.g. a spec to
    parse). `flag`: its `lrprobe compute` option (default: --<name with dashes>); `cli=False`:
    the Python API only (`compute_run(params=...)`). A parameter two probes share is one Param
    object (the second module imports the first's)."""

    default: Any
    help: str
    kind: Any = None  # None: the default's type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple | None = None
    item: type | None = None  # a list's items
    check: Callable[[Any], Any] | None = None
    flag: str | None = None
    cli: bool = True
    metavar: str | None = None

    @property
    def type(self):
        return self.kind if self.kind is not None else type(self.default)

    def validate(self, name: str, value) -> None:
        """LrscopeError in one line unless `value` is a valid value of this parameter."""
        from ..train.checks import check_value

        kind = self.type
        if kind == "path":
            kind = str
        if kind is list and isinstance(value, tuple):
            value = list(value)
        check_value(f"probe parameter {name}", value, kind, lo=self.lo, hi=self.hi, lo_open=self.lo_open,
                    hi_open=self.hi_open, choices=self.choices, item=self.item, error=LrscopeError,
                    choice_label=name)
        if self.check is not None:
            self.check(value)


def param(default, help: str, **kw) -> Param:
    """A probe parameter's declaration (see `Param`)."""
    return Param(default, help, **kw)


def var(long_name: str, description: str, units: str | None = None) -> dict[str, str]:
    """What a probe variable (or coordinate) means: the attrs open_run / open_sweep give it (a
    result's own long_name wins: it may name the parameters)."""
    return {"long_name": long_name, "description": description, **({"units": units} if units else {})}


@dataclass(frozen=True)
class Headline:
    """A per-run scalar a probe writes that summaries show: in the report's summary table and its
    metrics-vs-LR figure (`label`), and as a column of `lrprobe ls` and of the report's run list
    when it has a `short` label."""

    var: str
    label: str
    short: str = ""


@dataclass(frozen=True)
class ProbeEntry:
    """One probe. `function` ("module:name") takes the runner's Context and returns an xarray
    Dataset; `format` is the version of its definition: bump it (above PROBE_FORMAT) when the
    probe's results change, and only its stored results are recomputed.

    `params`: name -> `Param` (a plain string, the older plugin form, is a Python-API parameter
    with that help and no default); `variables`: name -> `var(...)` for what it writes (names
    unique across probes; `<v>_final` of a declared `v` is described from it); `describe(name)`: the
    `var(...)` of a name it makes from a pattern (e.g. `pruning_<kind>`), None for another name;
    `coords`: its per-run coordinates (open_sweep gives them the `run` dimension); `check(params)`:
    rules across its parameters; `check_runs(runs, params)`: checks against the runs before anything is
    computed."""

    name: str
    function: str
    description: str
    format: int = PROBE_FORMAT
    cost: str = ""  # what it reads or runs, and what it costs next to training
    samples: str = ""  # which samples it is evaluated on (lrprobe list)
    default: bool = True  # computed by `lrprobe compute` without --only (False: a specialist probe, asked by name)
    params: Mapping[str, Any] = field(default_factory=dict)
    headline: tuple[Headline, ...] = ()
    # It runs the network rebuilt from a checkpoint (load_model): for a run of a plugin model it needs
    # the plugin importable and unchanged (train/plugins.py); the others read the stored arrays only.
    runs_model: bool = False
    plugin: str = ""  # a plugin probe: its distribution and version (set when its entry point is loaded)
    variables: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    describe: Callable[[str], Mapping[str, str] | None] | None = None
    coords: tuple[str, ...] = ()
    check: Callable[[dict], None] | None = None
    check_runs: Callable[[list, dict], None] | None = None

    def __post_init__(self):
        params = {k: (v if isinstance(v, Param) else Param(None, str(v), cli=False)) for k, v in self.params.items()}
        object.__setattr__(self, "params", params)

    def load(self):
        module, _, name = self.function.partition(":")
        return getattr(importlib.import_module(module), name)

    def __call__(self, ctx) -> Any:
        return self.load()(ctx)


DECLARED: list[ProbeEntry] = []  # filled as the probe modules are imported, in their order


def probe(name: str, description: str, **kw) -> Callable:
    """Declare the decorated function `f(ctx) -> xr.Dataset` as the probe `name` (the keywords:
    ProbeEntry's fields)."""
    def register(fn):
        if any(e.name == name for e in DECLARED):
            raise TypeError(f"probe {name!r} is declared twice")
        DECLARED.append(ProbeEntry(name, f"{fn.__module__}:{fn.__name__}", description, **kw))
        return fn
    return register


def replace(entry: ProbeEntry, **kw) -> ProbeEntry:
    return dataclasses.replace(entry, **kw)
