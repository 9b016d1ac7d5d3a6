"""Sweeps: a TOML grid of run configs, trained one after another or by a local process pool.

Spec format::

    [base]                 # any RunConfig field
    dataset = "parity"
    model = "fcn"

    [grid]                 # the cross product of these lists
    lr = [0.01, 0.1, 0.5]
    seed = [0, 1, 2]

Runs go to a local process pool (``workers``) or, with ``scheduler``, to a dask.distributed cluster
(one task per run). Completed and diverged runs are skipped, interrupted ones resume (each run is resumable by
itself), so re-running a sweep command finishes whatever is left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import signal
import stat
import threading
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, LrscopeError, RunInterrupted
from ..parallel import dask_map, pool_processes, worker_threads
from .config import RunConfig

MAX_SPEC_BYTES = 16 * 2**20
MAX_RUNS = 100_000


def load_spec(path: str | os.PathLike) -> list[RunConfig]:
    """The run configs of a TOML spec file (see `expand_spec`); any problem is a ConfigError."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"sweep spec {path} is a folder, not a TOML file")
        if not stat.S_ISREG(st.st_mode):  # a fifo would block, /dev/zero be read forever
            raise ConfigError(f"sweep spec {path} is not a regular file")
        if st.st_size > MAX_SPEC_BYTES:
            raise ConfigError(f"sweep spec {path} is {st.st_size:,} bytes; a spec is a small TOML file")
        with open(path, "rb") as f:
            spec = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"sweep spec {path} not found") from None
    except OSError as e:
        raise ConfigError(f"sweep spec {path} cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"sweep spec {path} is not valid TOML: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"sweep spec {path} is not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"sweep spec {path} is not valid TOML: nested too deeply") from None
    return expand_spec(spec, str(path))


def expand_spec(spec: dict[str, Any], where: str = "spec") -> list[RunConfig]:
    """The run configs of a spec: [base] over the defaults, times the cross product of [grid].
    Every value is type- and range-checked where it is written ([base] key / [grid] axis), every
    resulting config validated (data and model options included) before any run starts."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a table with [base] and [grid]")
    unknown = set(spec) - {"base", "grid", "name", "description"}
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {', '.join(sorted(map(str, unknown)))}; "
                          "expected [base] and [grid]")
    for key in ("name", "description"):
        if key in spec and not isinstance(spec[key], str):
            raise ConfigError(f"{where}: {key} must be a string, got {spec[key]!r}")
    base = spec.get("base", {})
    grid = spec.get("grid", {})
    if not isinstance(base, dict) or not isinstance(grid, dict):
        raise ConfigError(f"{where}: [base] and [grid] must be tables")
    if not base and not grid:
        raise ConfigError(f"{where}: the spec sets nothing: give a [base] table of config fields and/or a [grid] "
                          "of axes, e.g. [grid] lr = [0.01, 0.1]")
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    for key in list(base) + list(grid):
        if key not in fields:
            raise ConfigError(f"{where}: unknown config field {key!r}; valid: {', '.join(sorted(fields))}")
    both = set(base) & set(grid)
    if both:
        raise ConfigError(f"{where}: {', '.join(sorted(both))} given in both [base] and [grid]")
    for key, value in base.items():
        try:
            RunConfig.check_field(key, value)
        except ConfigError as e:
            raise ConfigError(f"{where}: [base] {key}: {e}") from None
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            hint = f" (one value per run, e.g. {key} = [[200, 200], [400, 400]])" if key == "widths" else ""
            raise ConfigError(f"{where}: grid axis {key!r} must be a non-empty list{hint}")
        for v in values:
            try:
                RunConfig.check_field(key, v)
            except ConfigError as e:
                hint = (f" (each value of a grid axis is one run's setting: {key} = [[200, 200], [400, 400]])"
                        if key == "widths" and not isinstance(v, list) else "")
                raise ConfigError(f"{where}: [grid] {key}: {e}{hint}") from None
    keys = list(grid)
    n_runs = math.prod(len(grid[k]) for k in keys)
    if n_runs > MAX_RUNS:
        raise ConfigError(f"{where}: the grid makes {n_runs:,} runs; at most {MAX_RUNS:,} per spec")
    configs = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        d = dict(base)
        d.update(zip(keys, combo))
        try:
            cfg = RunConfig.from_dict(d)
        except TypeError as e:
            raise ConfigError(f"{where}: {e}") from None
        try:
            cfg.validate()
        except ConfigError as e:
            at = ", ".join(f"{k}={v!r}" for k, v in zip(keys, combo))
            raise ConfigError(f"{where}: {e}" + (f" (in the run {at})" if at else "")) from None
        configs.append(cfg)
    ids = [c.run_id() for c in configs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{where}: the grid repeats a run (duplicate values on an axis?)")
    return configs


def _worker(cfg_dict: dict, out: str, threads: int, stop_file: str | None = None) -> tuple[str, str, str, str]:
    """Train (or resume, or skip) one run: (run_id, status, message, action), action being
    trained | resumed | skipped | interrupted | busy | stopped | error."""
    import torch

    if stop_file is not None and os.path.exists(stop_file):  # the sweep was stopped: start nothing new
        return RunConfig.from_dict(cfg_dict).run_id(), STOPPED, "not started: the sweep was stopped", STOPPED
    if threads:
        torch.set_num_threads(threads)
    from ..store.lock import RunLocked
    from .loop import train_run

    cfg = RunConfig.from_dict(cfg_dict)
    try:
        r = train_run(cfg, out, progress=False)
        _exit_if_orphaned()
        action = "skipped" if r.skipped else "resumed" if r.resumed_from is not None else "trained"
        return cfg.run_id(), r.status, r.message, action
    except RunLocked as e:
        return cfg.run_id(), BUSY, str(e), BUSY
    except RunInterrupted as e:  # checkpointed and stopped by a signal: the sweep is being stopped
        if stop_file is None:  # in the sweep's own process: it stops the sweep
            raise
        _exit_if_orphaned()  # the kernel's SIGTERM on the sweep's death: the run is checkpointed
        return cfg.run_id(), INTERRUPTED, str(e), INTERRUPTED
    except LrscopeError as e:
        return cfg.run_id(), "error", str(e), "error"


BUSY = "busy"
STOPPED = "stopped"
INTERRUPTED = "interrupted"


_PARENT: int | None = None  # in a pool worker: the sweep process


def _exit_if_orphaned() -> None:
    """A pool worker whose sweep process died exits (its queues are never read again)."""
    if _PARENT is not None and os.getppid() != _PARENT:
        os._exit(1)


def _pool_worker_init(parent: int) -> None:
    """Pool workers leave Ctrl-C to the sweep process, which forwards SIGTERM to them (a terminal's
    Ctrl-C reaches the whole process group: two signals would stop a run without its checkpoint).
    SIGTERM between runs is ignored while the sweep process lives; the kernel sends SIGTERM when
    it dies (SIGKILL included), and then a worker checkpoints its run (the training loop's
    handler) or, between runs, exits."""
    global _PARENT
    _PARENT = parent
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def between_runs(signum, frame):
        if os.getppid() != parent:
            os._exit(1)

    signal.signal(signal.SIGTERM, between_runs)
    _die_with_parent(parent)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="lrscope-orphan-watch").start()


def _watch_parent(parent: int, every: float = 1.0, grace: float = 120.0) -> None:
    """Belt and braces for PR_SET_PDEATHSIG (Linux only; a signal can be missed): once the sweep
    process is gone, SIGTERM to this worker (its run checkpoints and stops; idle, it exits), and
    exit outright if that has not ended it within `grace` seconds."""
    while os.getppid() == parent:
        time.sleep(every)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace)
    os._exit(1)


def _die_with_parent(parent: int) -> None:
    """prctl(PR_SET_PDEATHSIG, SIGTERM) on Linux: the worker hears of its parent's death."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # not Linux: workers then outlive a SIGKILLed sweep
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _dask_results(configs: list[RunConfig], out: str, scheduler, workers: int, threads: int | None):
    """One dask.distributed task per run (see `lrscope.parallel.dask_client` for `scheduler`);
    `out` must be on a filesystem the workers share."""
    if threads is None:
        threads = worker_threads(workers, scheduler)
    yield from dask_map(_worker, [(f"lrtrain-{c.run_id()}", (c.to_dict(), out, threads)) for c in configs],
                        scheduler, workers)


@contextlib.contextmanager
def _forward_signals(pool: ProcessPoolExecutor, futs, stop_file: Path):
    """SIGINT (Ctrl-C) and SIGTERM to the sweep process stop the sweep: runs not started are
    cancelled (those already queued see `stop_file` and start nothing), running ones get SIGTERM,
    checkpoint and stop. A second signal kills the workers at once (their runs resume from their
    last checkpoint)."""
    stopped: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield stopped
        return

    def forward(signum, frame):
        stopped.append(signum)
        stop_file.touch()
        for f in futs:
            f.cancel()
        for proc in pool_processes(pool):
            try:
                os.kill(proc.pid, signal.SIGKILL if len(stopped) > 1 else signal.SIGTERM)
            except OSError:
                pass

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stopped
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _run_batched(configs, out, progress, done, max_stack: int) -> list[RunConfig]:
    """Train the batchable fresh runs in stacks; return the configs left for the usual path."""
    from .batched import batch_key, train_batched
    from .loop import store_path

    groups: dict[str, list[RunConfig]] = {}
    rest = []
    for c in configs:
        key = batch_key(c)
        if key is None or store_path(out, c.run_id()).exists():
            rest.append(c)
        else:
            groups.setdefault(key, []).append(c)
    for members in groups.values():
        if len(members) == 1:
            rest.extend(members)
            continue
        for i in range(0, len(members), max_stack):
            chunk = members[i:i + max_stack]
            try:
                results = train_batched(chunk, out, progress=progress)
            except LrscopeError:  # busy (RunLocked) or half-made: the one-by-one path sorts it out
                rest.extend(chunk)
                continue
            for c, r in zip(chunk, results):
                done((c.run_id(), r.status, r.message, "trained"))
    order = {c.run_id(): i for i, c in enumerate(configs)}
    return sorted(rest, key=lambda c: order[c.run_id()])


class SweepResults(list):
    """(run_id, status, message) per run, plus `actions`: how many runs were trained, resumed,
    skipped (already finished), interrupted, not started, or ended in an error."""

    def __init__(self):
        super().__init__()
        self.actions: dict[str, int] = {}

    def summary(self) -> str:
        order = ("trained", "resumed", "skipped", INTERRUPTED, STOPPED, "error")
        parts = [f"{self.actions[a]} {a if a != STOPPED else 'not started'}" for a in order if self.actions.get(a)]
        return ", ".join(parts) or "nothing to do"


def run_sweep(configs: list[RunConfig], out: str | os.PathLike, *, workers: int = 1, progress: bool = True,
              on_result: Callable[[str, str, str], None] | None = None,
              poll: float = 1.0, scheduler=None, threads: int | None = None,
              batched: int = 0) -> SweepResults:
    """Train every config into `out`; returns (run_id, status, message) per run (a `SweepResults`,
    whose `actions` count the runs trained, resumed and skipped).

    ``workers``: local processes (a ProcessPoolExecutor) with ``threads`` torch threads each
    (default: the cores shared out); ``scheduler``: run on dask.distributed instead ("local", an
    address, or a Client; see `_dask_results`). ``batched``: first train the fresh runs that
    differ only in lr and seed as stacks in this process (`train.batched`; up to ``batched`` runs
    per stack when > 1), then the rest as usual.

    SIGINT (Ctrl-C) and SIGTERM stop the sweep: nothing new starts, running runs checkpoint, and
    `RunInterrupted` says how many runs were stopped and not started.

    Runs another process is training (its lock is held) are deferred and waited for, so several
    sweep processes can share one output folder and each returns once the whole grid is done."""
    from ..store.nesting import check_not_in_store

    check_not_in_store(out)
    created = not Path(out).exists()
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LrscopeError(f"cannot create output folder {out}: {e.strerror or e}") from None
    try:
        return _run_sweep(configs, out, workers, progress, on_result, poll, scheduler, threads, batched)
    except LrscopeError:  # e.g. an unreachable dask scheduler: a folder this call made and left empty goes
        if created:
            with contextlib.suppress(OSError):
                Path(out).rmdir()  # only if empty
        raise


def _run_sweep(configs, out, workers, progress, on_result, poll, scheduler, threads, batched) -> SweepResults:
    results = SweepResults()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(configs), desc="sweep", unit="run")

    def done(r):
        action = r[3] if len(r) > 3 else "trained"
        results.actions[action] = results.actions.get(action, 0) + 1
        if action in (INTERRUPTED, STOPPED):
            return
        results.append(tuple(r[:3]))
        if on_result:
            on_result(*r[:3])
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{r[0]}: {r[1]}")

    by_id = {c.run_id(): c for c in configs}
    busy: list[str] = []

    def take(r):
        if r[1] == BUSY:  # another process trains it: come back to it at the end
            busy.append(r[0])
        else:
            done(r)

    def interrupted(signum: int) -> RunInterrupted:
        left = len(configs) - len(results) - results.actions.get(INTERRUPTED, 0)
        return RunInterrupted(
            f"sweep stopped by {signal.Signals(signum).name}: {results.actions.get(INTERRUPTED, 0)} running run(s) "
            f"checkpointed, {left} not started, {len(results)} done; re-run the same lrtrain sweep command "
            f"(--out {out}) to resume", signum)

    try:
        if batched:
            configs = _run_batched(configs, str(out), progress, done, max_stack=batched if batched > 1 else 64)
        if scheduler is not None:
            for r in _dask_results(configs, str(out), scheduler, workers, threads):
                take(r)
        elif workers <= 1:
            for cfg in configs:
                try:
                    take(_worker(cfg.to_dict(), str(out), 0))
                except RunInterrupted as e:  # in this process: the loop checkpointed its run
                    results.actions[INTERRUPTED] = results.actions.get(INTERRUPTED, 0) + 1
                    raise interrupted(e.signum) from None
        else:
            threads = threads or worker_threads(workers)
            import multiprocessing as mp
            from concurrent.futures.process import BrokenProcessPool

            stop_file = Path(out) / f".sweep-stop-{os.getpid()}"
            try:
                with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                         initializer=_pool_worker_init, initargs=(os.getpid(),)) as pool:
                    futs = [pool.submit(_worker, c.to_dict(), str(out), threads, str(stop_file)) for c in configs]
                    with _forward_signals(pool, futs, stop_file) as stopped:
                        for f in as_completed(futs):
                            if f.cancelled():
                                continue
                            try:
                                take(f.result())
                            except BrokenProcessPool:  # a second signal killed the workers
                                if not stopped:
                                    raise
                    if stopped:
                        raise interrupted(stopped[0])
            finally:  # after the pool's shutdown: queued runs must see it until then
                stop_file.unlink(missing_ok=True)
        # runs held by other processes: wait for their lock, then finish (a no-op if the other
        # process completed it; a resume if it crashed)
        while busy:
            run_id = busy.pop(0)
            r = _worker(by_id[run_id].to_dict(), str(out), 0)
            if r[1] == BUSY:
                busy.append(run_id)
                time.sleep(poll)
            else:
                done(r)
    finally:
        if bar is not None:
            bar.close()
    return results
