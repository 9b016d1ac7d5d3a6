"""Training: run config, dataset and model registries, the training loop, sweeps."""

_LAZY = {"RunConfig": "config", "DATASETS": "data", "build_dataset": "data", "MODELS": "models",
         "create_model": "models"}


def __getattr__(name):
    """The registries load on first use, not on `import lrscope.train.config` (the command-line
    tools import the config at once)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RunConfig", "DATASETS", "MODELS", "build_dataset", "create_model"]
