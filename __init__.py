"""lrscope: what the learning rate does to neural networks.

>>> import lrscope
>>> sw = lrscope.open_sweep("runs/")          # lazy xarray Dataset along `run`
>>> net = lrscope.load_model(lrscope.open_run(sw.stores[0]))
"""

__version__ = "0.1.0"

from .errors import LrscopeError  # noqa: E402


def __getattr__(name):
    """open_run / open_sweep and the sweep helpers last_snapshot / at_iteration load xarray and
    dask on first use, not on `import lrscope` (so the command-line tools answer --help at once)."""
    if name in ("open_run", "open_sweep", "last_snapshot", "at_iteration"):
        from .store import reader

        return getattr(reader, name)
    raise AttributeError(f"module 'lrscope' has no attribute {name!r}")


def load_model(ds_or_path, checkpoint: int = -1, *, allow_changed_plugins: bool = False):
    """Rebuild the ``torch.nn.Module`` of a run from its config and checkpoint arrays (a plugin
    model's run: the plugin must be importable, and unchanged unless ``allow_changed_plugins``)."""
    from .train.restore import load_model as _load

    return _load(ds_or_path, checkpoint=checkpoint, allow_changed_plugins=allow_changed_plugins)


__all__ = ["open_run", "open_sweep", "last_snapshot", "at_iteration", "load_model", "LrscopeError", "__version__"]
