"""One task per run, on local processes or a dask.distributed cluster: shared by ``lrtrain sweep``
and ``lrprobe compute``."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterable, Iterator

from .errors import LrscopeError


def worker_threads(workers: int, scheduler=None) -> int:
    """Torch threads per worker: the cores shared out among `workers` local processes; one on a
    LocalCluster; 0 (leave the workers' own setting alone) on a remote scheduler."""
    if scheduler is None:
        return max(1, (os.cpu_count() or 1) // workers)
    return 1 if scheduler == "local" else 0


def pool_processes(pool) -> list:
    """The live worker processes of a ProcessPoolExecutor (to signal or stop them)."""
    return list((getattr(pool, "_processes", None) or {}).values())


@contextlib.contextmanager
def dask_client(scheduler, workers: int):
    """A distributed.Client for `scheduler`: "local" (a LocalCluster of `workers` single-threaded
    processes), a scheduler address (tcp://host:8786, e.g. of a dask-jobqueue SLURMCluster), or a
    Client (used as is, left open)."""
    from dask.distributed import Client, LocalCluster

    cluster = client = None
    try:
        if isinstance(scheduler, Client):
            client = scheduler
        elif scheduler == "local":
            cluster = LocalCluster(n_workers=max(1, workers), threads_per_worker=1, processes=True,
                                   dashboard_address=None)
            client = Client(cluster)
        else:
            try:
                client = Client(scheduler, timeout="10s")
            except OSError as e:
                raise LrscopeError(f"cannot reach the dask scheduler at {scheduler}: {e}") from None
        yield client
    finally:
        if client is not None and client is not scheduler:
            client.close()
        if cluster is not None:
            cluster.close()


def dask_map(fn: Callable, tasks: Iterable[tuple[str, tuple]], scheduler, workers: int) -> Iterator[Any]:
    """fn(*args) for each (key, args) of `tasks` as one dask task each; results as they finish.
    The tasks' files must be on a filesystem the workers share."""
    from dask.distributed import as_completed

    with dask_client(scheduler, workers) as client:
        futs = [client.submit(fn, *args, key=key, pure=False) for key, args in tasks]
        for f in as_completed(futs):
            yield f.result()


def pool_map(fn: Callable, tasks: list[tuple], workers: int, initializer: Callable | None = None) -> Iterator[Any]:
    """fn(*args) for each args of `tasks` on `workers` spawned local processes; results as they
    finish. An error or Ctrl-C stops the other workers too, without waiting for them."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=initializer)
    try:
        futs = [pool.submit(fn, *a) for a in tasks]
        for f in as_completed(futs):
            yield f.result()
    except BaseException:  # an error or Ctrl-C: stop the others too, without waiting for them
        for p in pool_processes(pool):
            p.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
