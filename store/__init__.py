"""The run store: schema, writer and reader. Imports nothing from train, probe or viz."""

from . import schema

_READER = ("find_runs", "open_run", "open_store", "open_sweep", "read_probe", "read_probes", "last_snapshot",
           "at_iteration")


def __getattr__(name):
    """The reader's functions, imported on first use (the reader loads xarray and dask)."""
    if name in _READER:
        from . import reader

        return getattr(reader, name)
    raise AttributeError(f"module 'lrscope.store' has no attribute {name!r}")


__all__ = ["schema", *_READER]
