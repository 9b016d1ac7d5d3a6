"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class LrscopeError(Exception):
    """Bad input: a message for the user, no traceback."""


class ConfigError(LrscopeError, ValueError):
    """A run configuration that cannot be trained (unknown name, impossible value)."""


class StoreError(LrscopeError):
    """A path that is not a readable run store, or one this version cannot read."""


class ModelNotStored(StoreError):
    """A run recorded from a user's own loop: its network is the user's class, which lrscope does
    not rebuild from the store (the probes that run the network call themselves not defined)."""


class DataError(LrscopeError):
    """A dataset that cannot be built (missing data root, wrong layout)."""


class RunInterrupted(LrscopeError):
    """Training stopped by a signal after a clean checkpoint (pre-emption): not an error of input.
    The CLI exits with 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message, signum)  # both in args: the exception survives pickling (process pools)
        self.signum = signum

    def __str__(self) -> str:
        return str(self.args[0])


class PluginError(ConfigError):
    """A plugin (a model, dataset or probe from outside lrscope, train/plugins.py) that cannot be
    used: not importable, badly declared, or changed since the run was trained."""


class PluginMissing(PluginError):
    """A plugin that cannot be imported here (its package is not installed, or its import fails)."""


class PluginChanged(PluginError):
    """A plugin whose source (sha256 of its module file) differs from the one a run was trained with."""
