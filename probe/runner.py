"""``lrprobe compute``: run the declared probes (probe/registry.py) over runs and write each
result as an xarray Dataset under ``probes/<name>`` in the run's store, with provenance.

A probe is up to date when its stored provenance (lrscope version, parameters, and the run's
committed lengths) matches what it would be computed from now; such probes are skipped. The
probes themselves live in their modules (probe/probes/), what they read about a run in
probe/context.py; runs go to local processes or dask through lrscope.parallel.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Callable

import xarray as xr

from .. import __version__
from ..errors import LrscopeError, ModelNotStored, PluginChanged, PluginError, StoreError
from ..parallel import dask_map, pool_map, worker_threads
from ..store import schema as S
from ..store.probes import stored_provenance, write_probe
from ..store.reader import open_run, open_store
from ..train.plugins import check_run, source_sha256
from . import metrics as M
from .context import (  # noqa: F401 - the names probes and tests import from here
    NO_BIAS,
    Context,
    balanced_subset,
    check_device,
    final_value,
    has_bias,
    load_aware_threads,
    probe_device,
    require_bias,
    selective_representation,
    without_bias,
)
from .probes.attributions import parse_checkpoints  # noqa: F401
from .registry import PARAMS, PROBES, check_names, check_params, check_runs  # noqa: F401


# ------------------------------------------------------------------------------- runner
def _provenance(ctx: Context, name: str) -> dict:
    """What a result is computed from: the run as the probe's view of it shows it (its committed
    lengths and status when it was opened; a run still training goes on past them), the
    parameters and the probe's definition."""
    out = {"probe": name, "probe_format": PROBES[name].format, "lrscope_version": __version__,
           "params": json.dumps(_provenance_params(ctx.params, name), sort_keys=True),
           "source_committed": json.dumps(ctx.ds.attrs["committed"], sort_keys=True),
           "source_status": ctx.ds.attrs["status"]}
    if PROBES[name].plugin:  # a plugin probe: its distribution, and its source by content (an edit recomputes)
        out["probe_plugin"] = PROBES[name].plugin
        out["probe_source_sha256"] = str(source_sha256(PROBES[name]))
    return out


SEGMENTER_PARAMS = ("segmenter_weights", "segmenter")


def _provenance_params(params: dict, name: str) -> dict:
    """The parameters a result is computed from: the segmenter's only for the probes that take
    them, and its weights file by its content (sha256), not its path."""
    out = {k: v for k, v in params.items() if k not in SEGMENTER_PARAMS or k in PROBES[name].params}
    if "segmenter_weights" in out:
        from .segment import file_digest

        out["segmenter_weights"] = "sha256:" + file_digest(out["segmenter_weights"])
    return out


def check_plugins(runs, names, allow_changed: bool = False) -> None:
    """Before any probe is computed: PluginChanged (one line, naming the import path and both
    hashes) for a run whose plugin model's source changed since training, when a probe that runs
    the network is asked for, unless `allow_changed`. A plugin that is missing here is no error:
    the probes that run the network are then "not defined" with that reason, the others computed
    from the stored arrays."""
    if allow_changed or not any(PROBES[n].runs_model for n in names):
        return
    for path in runs:
        try:
            attrs = open_store(path).attrs.asdict()
        except LrscopeError:
            continue  # the runner reports unreadable stores
        try:
            check_run(attrs, "model")
        except PluginChanged as e:
            raise PluginChanged(f"{Path(path).name}: {e}") from None
        except PluginError:
            pass


def compute_run(path, names=None, *, force: bool = False, data_root: str | None = None, params=None,
                log: Callable[[str], None] | None = None, device: str = "auto",
                progress: Callable[[str, str, bool], None] | None = None,
                allow_changed_plugins: bool = False) -> dict[str, str]:
    """Compute the named probes (default: every default probe) for one run store; returns name -> outcome.

    Each result is written by a background thread while the next probe computes (one writer,
    in order; every pending write has finished when this returns or raises). Dask arrays of the
    run are computed on local threads (also inside a dask.distributed task: the run is the task).
    `device`: where the probes that run the network run (cpu | cuda | auto: cuda when there is
    one), recorded in each result's `device` attribute (not part of its provenance: a result
    computed on either is up to date). `progress(run, probe, done)` is called as each probe
    starts (done False) and ends (done True, also when skipped). `allow_changed_plugins`: rebuild a
    plugin model whose source changed since training (else `check_plugins` refuses)."""
    path = Path(path)
    names = check_names(names)
    params = check_params(params)
    device = check_device(device)
    check_runs([path], names, params)
    check_plugins([path], names, allow_changed_plugins)
    with _probe_lock(path):  # one lrprobe at a time per run: concurrent rewrites would race
        return _compute_locked(path, names, force, data_root, params, log, device, progress, allow_changed_plugins)


@contextlib.contextmanager
def _probe_lock(path: Path):
    """An exclusive flock on the store's folder itself (no lock file: probing writes nothing
    beside the store); a second lrprobe on the same run waits for the first."""
    import fcntl

    open_store(path)  # validates first: a path that is not a store gets its one-line error
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _compute_locked(path: Path, names, force, data_root, params, log, device="auto", progress=None,
                    allow_changed_plugins: bool = False) -> dict[str, str]:
    from concurrent.futures import ThreadPoolExecutor

    import dask
    import dask.threaded

    root = open_store(path)
    ds = open_run(path, probes=False)  # one view of the run: every probe is computed from it
    ctx = Context(path, ds, data_root, params, device, allow_changed_plugins=allow_changed_plugins)
    outcomes: dict[str, str] = {}
    run = ds.attrs.get("run_id", path.name)
    tell = progress or (lambda *a: None)
    if ds.sizes.get("snapshot", 0) == 0:
        for n in names:
            tell(run, n, True)
        return {n: "skipped (no snapshots yet)" for n in names}
    diverged = ds.attrs["status"] == S.STATUS_DIVERGED
    writes: list = []

    def written(name: str, res: xr.Dataset) -> None:
        write_probe(path, name, res)
        outcomes[name] = f"computed in {res.attrs['seconds']:.2f}s"
        if res.attrs.get("not_defined"):  # the rest computed; these variables are not
            outcomes[name] += f"; not defined: {res.attrs['not_defined']}"
        if log:
            log(f"{path.name}: {name} {outcomes[name]}")

    # a callable scheduler: dask then neither looks for a distributed client nor imports distributed
    with ThreadPoolExecutor(1, thread_name_prefix="lrscope-probe-writer") as writer, \
            dask.config.set(scheduler=dask.threaded.get):
        try:
            for name in names:
                prov = _provenance(ctx, name)
                old = stored_provenance(root, name)
                if not force and old is not None and all(old.get(k) == v for k, v in prov.items()):
                    outcomes[name] = "up to date"
                    tell(run, name, True)
                    continue
                tell(run, name, False)
                ctx.used_device = False
                t0 = time.perf_counter()
                try:
                    with load_aware_threads() as threads:
                        res = PROBES[name](ctx).compute()  # read everything here, where errors are caught
                except (M.MetricError, PluginError, ModelNotStored) as e:  # not rebuildable here
                    outcomes[name] = f"not defined: {e}"
                    tell(run, name, True)
                    continue
                except LrscopeError:
                    raise
                except Exception as e:  # unreadable chunks, codec errors: a damaged store, said in one line
                    if os.environ.get("LRSCOPE_DEBUG"):
                        raise
                    if diverged:  # non-finite weights and logits: a result, not a damaged store
                        outcomes[name] = f"not defined: the run diverged ({type(e).__name__}: {e})"
                        tell(run, name, True)
                        continue
                    raise StoreError(f"{path}: probe {name!r} failed reading the store ({type(e).__name__}: {e}); "
                                     "corrupted or truncated store? (LRSCOPE_DEBUG=1 shows the traceback)") from None
                # the run's own coordinates a result carries along (snapshot_iteration, run, lr, ...) are the
                # run's, read from the run: a probe returns its own variables only
                res = res.drop_vars([c for c in res.coords if c not in res.dims and c in ctx.ds.variables])
                res.attrs.update(prov)
                res.attrs["seconds"] = round(time.perf_counter() - t0, 4)
                if ctx.used_device:
                    res.attrs["device"] = str(ctx.torch_device)
                res.attrs["cpu_threads"] = threads
                writes.append(writer.submit(written, name, res))
                tell(run, name, True)
        finally:
            try:
                for w in writes:  # the results computed so far are stored, whatever stopped the loop
                    w.result()
            except OSError as e:  # disk full, store removed: the older results keep their marks
                raise LrscopeError(f"{path}: writing a probe result failed ({e.strerror or e}); "
                                   "fix the cause and run lrprobe compute again") from None
    return {n: outcomes[n] for n in names}  # in the order asked (writes finish out of it)


def _probe_worker(path: str, names, force: bool, data_root, params, device, allow_changed_plugins: bool,
                  threads: int) -> tuple[str, dict[str, str]]:
    if threads:
        import torch

        torch.set_num_threads(threads)
    return path, compute_run(path, names, force=force, data_root=data_root, params=params, device=device,
                             allow_changed_plugins=allow_changed_plugins)


def _ignore_sigint() -> None:
    """Pool workers leave Ctrl-C to the parent, which stops them (a probe is marked complete only
    once written, so one cut short is recomputed next time)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def compute_paths(paths, names=None, *, force=False, data_root=None, progress=True, params=None,
                  log=None, workers: int = 1, scheduler=None, device: str = "auto",
                  allow_changed_plugins: bool = False) -> dict[str, dict[str, str]]:
    """Probe every run store under `paths`: one after another, on `workers` local processes, or
    with `scheduler` one dask.distributed task per run ("local" or an address; see
    `lrscope.parallel.dask_client`). Returns path -> probe name -> outcome.

    `progress`: a bar on stderr counting (run, probe) pairs, with the rate and an ETA; probing in
    turn, it names the run and the probe being computed, and moves as each probe ends; with
    workers or a scheduler it moves as each run ends."""
    from ..store.reader import find_runs

    runs = find_runs(paths)
    names = check_names(names)
    params = check_params(params)
    device = check_device(device)
    if workers < 1:
        raise LrscopeError(f"workers must be >= 1, got {workers}")
    check_runs(runs, names, params)  # before anything is computed
    check_plugins(runs, names, allow_changed_plugins)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(runs) * len(names), desc="probing", unit="probe", mininterval=0,
                   bar_format="{desc}: {n_fmt}/{total_fmt} probes |{bar:20}| {elapsed}<{remaining} ETA")
    results: dict[str, dict[str, str]] = {}
    args = [(str(p), names, force, data_root, params, device, allow_changed_plugins) for p in runs]
    position = {}

    def tell(run: str, name: str, done: bool) -> None:
        if bar is None:
            return
        k = position.setdefault(run, len(position) + 1)
        if done:
            bar.update()
        else:
            bar.set_description_str(f"run {k}/{len(runs)} {run}: {name}")

    try:
        if scheduler is not None:
            threads = worker_threads(workers, scheduler)
            done = dask_map(_probe_worker, [(f"lrprobe-{Path(a[0]).name}", a + (threads,)) for a in args],
                            scheduler, workers)
        elif workers > 1 and len(runs) > 1:
            threads = worker_threads(workers)
            done = pool_map(_probe_worker, [a + (threads,) for a in args], workers, initializer=_ignore_sigint)
        else:
            done = ((p, compute_run(p, names, force=force, data_root=data_root, params=params, log=log,
                                    device=device, progress=tell, allow_changed_plugins=allow_changed_plugins))
                    for p, *_ in args)
        sequential = scheduler is None and not (workers > 1 and len(runs) > 1)
        for path, outcome in done:
            results[path] = outcome
            if bar is not None and not sequential:
                bar.set_description_str(f"{len(results)}/{len(runs)} runs, last {Path(path).name}")
                bar.update(len(names))
    finally:
        if bar is not None:
            bar.close()
    return {str(p): results[str(p)] for p in runs}
