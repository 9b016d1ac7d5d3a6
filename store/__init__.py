"""The run store: schema, writer and reader. Imports nothing from train, probe or viz."""

from . import schema
from .reader import find_runs, open_run, open_store, open_sweep, read_probe, read_probes

__all__ = ["schema", "open_run", "open_sweep", "open_store", "find_runs", "read_probe", "read_probes"]
