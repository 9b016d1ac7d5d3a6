"""Plugins: models, datasets and probes from outside lrscope.

A plugin is a function in any importable module, named by its import path
``package.module:function`` (``--model own_model.nets:small_cnn``), or by the name of an entry point
an installed distribution declares in one of the groups of `GROUPS` (``lrscope.models``,
``lrscope.datasets``, ``lrscope.probes``); `lrtrain models`, `lrtrain datasets` and
`lrprobe list` list those beside the built-in entries. A config always holds the import path
(an entry point's name is resolved to its value by `canonical`), so a store names its plugin
whatever the other machine's entry points are.

Declarations are the registry's own: a model builder may carry ``@plugin_model(options={...},
image=..., signed_features=...)`` and a dataset builder ``@plugin_dataset(rho_train=...,
options={...})`` (the same keywords as ``register_model`` / ``register_dataset``, the same
`option` declarations, the same checks and one-line errors), but they register nothing: the
entry rides on the function (`ENTRY_ATTR`), under the import path the user names. A builder
without a declaration takes no options. A plugin probe is a `probe.registry.ProbeEntry` whose
``function`` is the import path of ``probe_x(ctx) -> xr.Dataset``.

Provenance (`provenance`): a run records, for each plugin it was trained with, the import path,
the distribution that provides it and its version (importlib.metadata; None when the module is
not installed as a distribution) and the sha256 of the module file that defines the function
(``inspect.getsourcefile``: the builder's own module, not the modules it imports). `verify`
rebuilds from that record: a plugin that cannot be imported is `PluginMissing`, one whose source
hash differs is `PluginChanged` unless the caller allows changed plugins.

This module imports neither torch nor the plugins at import time.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, PluginChanged, PluginError, PluginMissing

GROUPS = {"model": "lrscope.models", "dataset": "lrscope.datasets", "probe": "lrscope.probes"}
ENTRY_ATTR = "lrscope_entry"  # the registry entry a declared builder carries
IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
OVERRIDE = "--allow-changed-plugins (Python: allow_changed_plugins=True) uses it anyway"


def is_import_path(name: Any) -> bool:
    return isinstance(name, str) and ":" in name


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def load_object(path: str, what: str) -> Any:
    """The object at import path `path` (``package.module:attr``); PluginMissing when the module
    cannot be imported or lacks the attribute, PluginError for a malformed path."""
    if not isinstance(path, str) or not IMPORT_PATH.match(path):
        raise PluginError(f"{what} {path!r}: not an import path (expected package.module:function)")
    module, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - whatever the plugin's import raises is one line
        raise PluginMissing(f"{what} {path}: cannot import {module} ({_first_line(e)})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginMissing(f"{what} {path}: module {module} has no {attr!r}") from None
    return obj


# ------------------------------------------------------------------------------- entry points
@functools.cache
def entry_points(kind: str) -> tuple:
    """The installed distributions' entry points of `kind` (model | dataset | probe), by name."""
    from importlib.metadata import entry_points as eps

    seen = {}
    for ep in eps(group=GROUPS[kind]):
        seen.setdefault(ep.name, ep)  # the first on sys.path wins, as for imports
    return tuple(seen[n] for n in sorted(seen))


def names(kind: str) -> list[str]:
    return [ep.name for ep in entry_points(kind)]


def distribution_of(ep) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"] or dist.name, dist.version


def canonical(kind: str, name: str) -> str:
    """`name` as a config holds it: an entry point's name becomes its import path; anything else
    (a built-in name, an import path, an unknown name) is left as it is."""
    if is_import_path(name):
        return name
    for ep in entry_points(kind):
        if ep.name == name:
            return ep.value.replace(" ", "")
    return name


def listed(kind: str) -> list[tuple[Any, Any, str | None]]:
    """(entry point, its loaded object or None, error message or None) for every plugin of `kind`:
    what the listings print. A plugin that fails to load is listed with its one-line error."""
    out = []
    for ep in entry_points(kind):
        try:
            obj = entry_at(kind, ep.value.replace(" ", ""))
            out.append((ep, obj, None))
        except PluginError as e:
            out.append((ep, None, str(e)))
    return out


# ------------------------------------------------------------------------------- declarations
def plugin_model(fn=None, *, options: dict[str, dict] | None = None, image: bool = False, heavy: bool = False,
                 check=None, signed_features: bool = False):
    """Declare a plugin model builder (``@plugin_model`` or ``@plugin_model(options={...}, ...)``):
    the keywords of ``register_model``, checked the same way; nothing is registered. The builder
    takes ``input_shape`` and ``num_classes`` keywords and exactly its declared options, and
    returns any ``torch.nn.Module`` (``--features-at NAME`` names the module whose input is its
    penultimate representation) or a ``lrscope.train.nets.FeatureNet``."""
    from .model_registry import model_entry

    def deco(fn):
        e = model_entry(fn, name=f"{fn.__module__}:{fn.__qualname__}", options=options, image=image, heavy=heavy,
                        check=check, signed_features=signed_features)
        setattr(fn, ENTRY_ATTR, e)
        return fn

    return deco(fn) if fn is not None else deco


def plugin_dataset(fn=None, *, rho_train: float | None = None, options: dict[str, dict] | None = None,
                   cached: bool = False, check=None):
    """Declare a plugin dataset builder: the keywords of ``register_dataset``, checked the same way;
    nothing is registered. The builder takes ``seed``, ``rho_train`` (and ``data_root`` if it
    reads files) plus exactly its declared options, and returns a ``DataBundle``
    (``has_bias=False`` when the data has no bias attribute: b = y)."""
    from .recipes import dataset_entry

    def deco(fn):
        e = dataset_entry(fn, name=f"{fn.__module__}:{fn.__qualname__}", rho_train=rho_train, options=options,
                          cached=cached, check=check)
        setattr(fn, ENTRY_ATTR, e)
        return fn

    return deco(fn) if fn is not None else deco


def _declared(kind: str, path: str, obj):
    """The registry entry of the plugin object `obj` at `path`, named by its path."""
    what = f"plugin {kind}"
    if kind == "probe":
        from ..probe.declare import ProbeEntry

        if not isinstance(obj, ProbeEntry):
            raise PluginError(f"{what} {path}: expected a lrscope.probe.registry.ProbeEntry, got "
                              f"{type(obj).__name__}")
        return obj
    e = getattr(obj, ENTRY_ATTR, None)
    if e is None:
        if not callable(obj):
            raise PluginError(f"{what} {path}: not a function (got {type(obj).__name__})")
        try:
            if kind == "model":
                from .model_registry import model_entry

                e = model_entry(obj, name=path)
            else:
                from .recipes import dataset_entry

                e = dataset_entry(obj, name=path, rho_train=None)
        except (TypeError, ValueError) as err:  # keywords taken but not declared
            deco = "plugin_model(options=...)" if kind == "model" else "plugin_dataset(options=...)"
            raise PluginError(f"{what} {path}: {err} (declare its options with lrscope.train.plugins.{deco})") \
                from None
    return dataclasses.replace(e, name=path)


def entry_at(kind: str, path: str):
    """The registry entry (ModelEntry, DatasetEntry or ProbeEntry) of the plugin at import path
    `path`; PluginMissing / PluginError in one line."""
    return _declared(kind, path, load_object(path, f"plugin {kind}"))


def registered_or_plugin(kind: str, name: str, registry: dict):
    """The registry's entry `name` of `kind` (model | dataset), or the plugin's at import path
    `name` (``package.module:function``); ConfigError naming the valid ones if neither."""
    if name in registry:
        return registry[name]
    if is_import_path(name):
        return entry_at(kind, name)
    raise ConfigError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(registry) + names(kind))}, "
                      f"or a plugin's import path package.module:function")


# ------------------------------------------------------------------------------- provenance
def source_file(obj) -> str | None:
    """The file of the module that defines `obj` (a function, or a ProbeEntry's function)."""
    target = obj
    if hasattr(obj, "function") and isinstance(obj.function, str):  # a ProbeEntry
        try:
            target = obj.load()
        except Exception:  # noqa: BLE001 - no source to hash
            return None
    try:
        f = inspect.getsourcefile(inspect.unwrap(target))
    except TypeError:
        f = None
    if f is None:
        mod = sys.modules.get(getattr(target, "__module__", "") or "")
        f = getattr(mod, "__file__", None)
    return f


def source_sha256(obj) -> str | None:
    f = source_file(obj)
    if f is None:
        return None
    try:
        return hashlib.sha256(Path(f).read_bytes()).hexdigest()
    except OSError:
        return None


def distribution_for(module: str) -> tuple[str | None, str | None]:
    """(name, version) of the installed distribution that provides `module` (its top-level
    package), or (None, None) when it is not installed as one (a module on PYTHONPATH)."""
    from importlib import metadata

    top = module.split(".")[0]
    names_ = metadata.packages_distributions().get(top) or []
    if not names_:  # editable installs list a finder, not the package: their entry points say
        for kind in GROUPS:
            for ep in entry_points(kind):
                if ep.value.split(":")[0].split(".")[0] == top and getattr(ep, "dist", None) is not None:
                    return distribution_of(ep)
        return None, None
    try:
        return names_[0], metadata.version(names_[0])
    except metadata.PackageNotFoundError:
        return names_[0], None


def provenance(path: str, obj) -> dict:
    """What a store records about the plugin at `path`: import path, distribution and version,
    the sha256 of its module file and that file's name."""
    dist, version = distribution_for(path.split(":")[0])
    f = source_file(obj)
    return {"import_path": path, "distribution": dist, "version": version, "sha256": source_sha256(obj),
            "source": Path(f).name if f else None}


def run_provenance(config: dict) -> dict:
    """The `plugins` root attribute of a new run: the provenance of its plugin model and dataset
    (an empty dict when it uses built-in ones only)."""
    out = {}
    for kind in ("model", "dataset"):
        path = config.get(kind)
        if is_import_path(path):
            out[kind] = provenance(path, load_object(path, f"plugin {kind}"))
    return out


def verify(record: dict, kind: str, allow_changed: bool = False, hint: str = OVERRIDE):
    """The plugin object a store's provenance `record` names, imported and compared with the
    recorded source hash: PluginMissing when it cannot be imported here, PluginChanged when its
    module file's sha256 differs (unless `allow_changed`)."""
    path = record.get("import_path")
    obj = load_object(path, f"plugin {kind}")
    was, now = record.get("sha256"), source_sha256(obj)
    if was is not None and now != was and not allow_changed:
        raise PluginChanged(f"plugin {kind} {path} changed since the run was trained: its source sha256 is "
                            f"{(now or 'unreadable')[:16]} now, {was[:16]} at training; {hint}")
    return obj


def check_run(attrs: dict, kind: str, allow_changed: bool = False, hint: str = OVERRIDE) -> None:
    """Verify the plugin of `kind` a run's root attributes name (nothing when it has none)."""
    record = (attrs.get("plugins") or {}).get(kind)
    if isinstance(record, dict):
        verify(record, kind, allow_changed, hint)
    elif is_import_path((attrs.get("config") or {}).get(kind)):  # no record (a store of the recording API)
        load_object(attrs["config"][kind], f"plugin {kind}")
