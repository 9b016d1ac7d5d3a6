"""lrscope: what the learning rate does to neural networks.

>>> import lrscope
>>> sw = lrscope.open_sweep("runs/")          # lazy xarray Dataset along `run`
>>> net = lrscope.load_model(lrscope.open_run(sw.stores[0]))
>>> rec = lrscope.Recorder("runs", model=net, features_at="fc", optimizer=opt, data=bundle,
...                        config=dict(batch_size=64, max_steps=600))   # record a loop of your own
"""

__version__ = "0.1.0"

from .errors import LrscopeError  # noqa: E402


def __getattr__(name):
    """open_run / open_sweep and the sweep helpers last_snapshot / at_iteration load xarray and
    dask on first use, not on `import lrscope` (so the command-line tools answer --help at once);
    the recording API (Recorder, bundle_from_arrays) loads torch on first use."""
    if name in ("open_run", "open_sweep", "last_snapshot", "at_iteration"):
        from .store import reader

        return getattr(reader, name)
    if name == "Recorder":  # the public recording API (train/api.py) imports torch: on first use
        from .train.api import Recorder

        return Recorder
    if name == "selection_table":  # model selection over a sweep (probe/selection.py)
        from .probe.selection import selection_table

        return selection_table
    if name in ("bundle_from_arrays", "DataBundle"):
        from .train import recipes

        return getattr(recipes, name)
    raise AttributeError(f"module 'lrscope' has no attribute {name!r}")


def load_model(ds_or_path, checkpoint: int = -1, *, into=None, allow_changed_plugins: bool = False):
    """Rebuild the ``torch.nn.Module`` of a run from its config and checkpoint arrays (a plugin
    model's run: the plugin must be importable, and unchanged unless ``allow_changed_plugins``;
    `into`: load them into this network, e.g. yours for a run recorded with `Recorder`)."""
    from .train.restore import load_model as _load

    return _load(ds_or_path, checkpoint=checkpoint, into=into, allow_changed_plugins=allow_changed_plugins)


__all__ = ["open_run", "open_sweep", "last_snapshot", "at_iteration", "load_model", "Recorder", "bundle_from_arrays",
           "DataBundle", "selection_table", "LrscopeError", "__version__"]
