"""Recording one run: everything the training loops do between optimizer steps.

A stepper (the sequential loop in `train/loop.py`, the stacked one in `train/batched.py`, a
user's own loop through the public API in `train/api.py`) takes optimizer steps and, at each
recording point (the end of an epoch, a snapshot or checkpoint
iteration, the last step, a stop signal, or `MAX_BLOCK_ROWS` steps), hands the block of steps
since the last one to its run's `Recorder`, which

- derives the block's per-iteration statistics on the host (`Trainer.epoch_rows`) and logs them;
- ends the run as ``diverged`` at the first non-finite loss or gradient norm;
- keeps the epoch's running statistics and checks the stop criterion on the whole training set
  when they say it may hold (`may_have_converged`);
- takes snapshots, and writes, checkpoints and commits on the policy below;
- accounts wall and recording time, and turns errors into the run's status.

Write policy: buffered log rows and snapshots are written and committed at checkpoints, on a stop
signal, every `FLUSH_SECONDS`, or when the buffered snapshots pass `FLUSH_BYTES` (so readers follow
a long run); a checkpoint's commit carries every snapshot up to its iteration.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..errors import LrscopeError, RunInterrupted
from ..store import schema as S

FLUSH_SECONDS = 20.0
FLUSH_BYTES = 256 * 2**20
MAX_BLOCK_ROWS = 512  # at most this many steps' logits are held before the host statistics run
GRAD_UNKNOWN = "grad_unknown"  # a block's optional mask of rows without a gradient norm (not stored)


@dataclass
class RunResult:
    path: Path
    status: str
    message: str
    iterations: int = 0
    resumed_from: int | None = None  # the iteration a resumed run went on from
    skipped: bool = False  # already finished: nothing was done


def is_snapshot(t: int, every: int) -> bool:
    """Log-spaced early (0, 1, 2, 4, ... below `every`), then every `every` steps."""
    return t == 0 or t % every == 0 or (t < every and (t & (t - 1)) == 0)


def block_loss_sum(block: dict[str, np.ndarray]) -> float:
    """The summed training loss of a block of log rows (row mean loss × samples in the row)."""
    return float((block["loss"].astype(np.float64) * (block["bc_count"] + block["ba_count"])).sum())


def may_have_converged(cfg, epoch: int, correct: int, count: int, loss_sum: float) -> bool:
    """Whether the epoch's running statistics (seen with changing weights) justify checking the
    stop criterion on the whole training set. A running accuracy of 100% checks at once; 99% and
    over checks every 4th epoch, so that a run hovering just below 100% does not spend a full
    training-set pass per epoch (a stop comes at most 4 epochs late). Stateless, so resumes agree."""
    if cfg.stop == "max-steps" or not count or correct / count < 0.99:
        return False
    if cfg.stop == "train-loss" and loss_sum / count >= 10 * cfg.stop_loss:
        return False
    return correct == count or epoch % 4 == 3


def is_recording_point(t: int, cfg, steps_per_epoch: int, rows: int, stop_signal=None) -> bool:
    """Whether `rows` steps ending at iteration `t` (the steps taken so far) end a block: the end
    of an epoch, a snapshot or checkpoint iteration, the last step, a stop signal, or a full block."""
    every = cfg.snapshot_every  # is_snapshot inlined: this runs after every step
    return (t % steps_per_epoch == 0 or t % every == 0 or (t < every and (t & (t - 1)) == 0)
            or t % cfg.checkpoint_every == 0 or t == cfg.max_steps or bool(stop_signal) or rows >= MAX_BLOCK_ROWS)


class Recorder:
    """The recording side of one run (see the module docstring). `trainer` is the run's
    `Trainer` (its model, data, writer and host statistics; `block(t0, t)` gives the log rows of
    steps t0..t-1: the built-in steppers derive them from the epoch's order, the public API from
    the ids and logits the user's loop handed over); `extra_timings` are added to the stored
    timings (a batched run's stack size)."""

    def __init__(self, trainer, *, extra_timings: dict | None = None):
        self.tr, self.cfg, self.w = trainer, trainer.cfg, trainer.writer
        self.extra = dict(extra_timings or {})
        self.rec = 0.0  # seconds spent recording (snapshots, checkpoints, statistics, writes)
        self.t_wall = time.perf_counter()
        self.last_flush = time.perf_counter()
        self.epoch_correct = self.epoch_count = 0
        self.epoch_loss = 0.0
        self.last_epoch_accuracy: float | None = None
        self.status, self.reason = S.STATUS_COMPLETED, f"max_steps={self.cfg.max_steps} reached"
        self.stop_met = True  # False when max_steps ends the run before its stop criterion held
        self.t = 0
        self.ended = False

    # ------------------------------------------------------------------ start
    def begin(self, start: int, reason: str = "training") -> None:
        """A fresh store gets its snapshot and checkpoint at iteration 0; a run resumed mid-epoch
        gets the epoch's running statistics so far back from the log."""
        self.t = start
        w = self.w
        if w.committed["checkpoint"] == 0:  # a resume from iteration 0 has both already
            r0 = time.perf_counter()
            self.tr.snapshot(0)
            w.flush()  # a checkpoint's commit must carry every snapshot up to its iteration
            self.tr.checkpoint(0)
            w.commit(status=S.STATUS_RUNNING, reason=reason)
            self.rec += time.perf_counter() - r0
        spe = self.tr.steps_per_epoch
        ep_start = (start // spe) * spe
        if start > ep_start:
            log = w.root[S.G_LOG]
            acc = np.asarray(log["accuracy"][ep_start:start], dtype=np.float64)
            cnt = np.asarray(log["bc_count"][ep_start:start]) + np.asarray(log["ba_count"][ep_start:start])
            self.epoch_correct, self.epoch_count = int(np.round(acc * cnt).sum()), int(cnt.sum())
            self.epoch_loss = float((np.asarray(log["loss"][ep_start:start], dtype=np.float64) * cnt).sum())

    # ------------------------------------------------------------------ one block of steps
    def record(self, t0: int, t: int, *, stop_signal=None, sync: Callable[[], None] = lambda: None) -> bool:
        """Record the steps t0..t-1 (the trainer holds their logits and norms). `sync` brings the
        run's current weights into the trainer's model (a no-op for the sequential loop; the
        stack's slice for a batched run), called only when they are needed. Returns True when the
        run has ended here: diverged, converged or at max_steps (the store is then finished)."""
        cfg, w = self.cfg, self.w
        epoch, pos = divmod(t - 1, self.tr.steps_per_epoch)
        end_of_epoch = pos == self.tr.steps_per_epoch - 1
        snap = is_snapshot(t, cfg.snapshot_every)
        ckpt = t % cfg.checkpoint_every == 0
        r0 = time.perf_counter()
        block, corr, cnt = self.tr.block(t0, t)
        # a row whose gradient norm the stepper could not see (a user's loop that cleared the
        # grads before recording) is judged by its loss and logits alone
        grad_ok = np.isfinite(block["grad_norm"]) | block.pop(GRAD_UNKNOWN, False)
        finite = np.isfinite(block["loss"]) & grad_ok
        if not finite.all():
            bad = int(np.argmin(finite))
            w.append_log({k: v[: bad + 1] for k, v in block.items()})
            self.t = t0 + bad + 1
            self.status = S.STATUS_DIVERGED
            self.reason = f"non-finite loss at iteration {t0 + bad} (lr={cfg.lr:g})"
            self.rec += time.perf_counter() - r0
            w.timings = self.timings()
            w.finish(self.status, self.reason, **{S.ATTR_DIVERGED_AT: t0 + bad})
            self.ended = True
            return True
        w.append_log(block)
        self.epoch_correct += corr
        self.epoch_count += cnt
        self.epoch_loss += block_loss_sum(block)
        self.t = t
        done = False
        if end_of_epoch:
            if may_have_converged(cfg, epoch, self.epoch_correct, self.epoch_count, self.epoch_loss):
                sync()
                ok, why = self.tr.converged(t)
                if ok:
                    done, self.reason = True, why
            self.last_epoch_accuracy = self.epoch_correct / max(self.epoch_count, 1)
            self.epoch_correct = self.epoch_count = 0
            self.epoch_loss = 0.0
        if not done and t >= cfg.max_steps:
            done = True
            self.out_of_steps()
        if snap or ckpt or done or stop_signal:
            sync()
        if snap and not done:
            self.tr.snapshot(t)
        if done:
            self.rec += time.perf_counter() - r0
            self.finish(t)
            return True
        due = time.perf_counter() - self.last_flush > FLUSH_SECONDS or w.buffered_snapshot_bytes > FLUSH_BYTES
        if ckpt or stop_signal or due:
            w.flush()
            if ckpt or stop_signal:
                self.tr.checkpoint(t)
            w.commit()
            self.last_flush = time.perf_counter()
        self.rec += time.perf_counter() - r0
        return False

    # ------------------------------------------------------------------ the end
    def out_of_steps(self) -> None:
        """The run ends at max_steps: with stop = max-steps that is its criterion; otherwise it
        ended before its criterion held, and its reason says so (stop_criterion_met = False)."""
        cfg = self.cfg
        self.stop_met = cfg.stop == "max-steps"
        if not self.stop_met:
            crit = "100% train accuracy" + (f" and train loss < {cfg.stop_loss:g}" if cfg.stop == "train-loss" else "")
            acc = ("" if self.last_epoch_accuracy is None else
                   f"; the last epoch's running train accuracy was {100 * self.last_epoch_accuracy:.1f}%")
            self.reason = f"max_steps={cfg.max_steps} reached before the stop criterion ({crit}){acc}"

    def finish(self, t: int) -> None:
        """The final snapshot and checkpoint at iteration t; status completed (or the stop reason)."""
        r0 = time.perf_counter()
        self.t = t
        self.w.flush()
        self.tr.snapshot(t, final=True)
        self.tr.checkpoint(t)
        self.rec += time.perf_counter() - r0
        self.w.timings = self.timings()
        self.w.finish(self.status, self.reason, **{S.ATTR_STOP_MET: self.stop_met})
        self.ended = True

    def interrupt(self, signum: int, what: str | None = None) -> RunInterrupted:
        """After a stop signal's checkpoint: mark the run resumable; the exception to raise."""
        self.w.timings = self.timings()
        self.w.commit(status=S.STATUS_RUNNING,
                      reason=f"stopped by signal {signum} at iteration {self.t}; re-run to resume")
        return RunInterrupted(what or f"{self.w.path.name}: stopped at iteration {self.t} (checkpointed); "
                              "re-run the same command to resume", signum)

    def timings(self) -> dict:
        old = self.w.timings
        wall = time.perf_counter() - self.t_wall
        self.t_wall = time.perf_counter()  # each call adds the time since the previous one
        rec, self.rec = self.rec, 0.0
        return {**old, "wall_seconds": old.get("wall_seconds", 0.0) + wall,
                "record_seconds": old.get("record_seconds", 0.0) + rec,
                "train_seconds": old.get("train_seconds", 0.0) + wall - rec, **self.extra}

    def result(self):
        return RunResult(self.w.path, self.status, f"{self.w.path.name}: {self.status} ({self.reason})", self.t)


@contextlib.contextmanager
def recording_errors(recorders: Callable[[], Iterable[Recorder]], what: str):
    """What an error while training means for the stores of `recorders()` (the runs still
    training): a failed write (disk full, store removed) is a one-line error and leaves every
    store at its last commit, resumable; Ctrl-C without a checkpoint (a second signal) marks them
    resumable; anything else marks them failed with the error and re-raises it."""
    try:
        yield
    except LrscopeError:
        raise
    except OSError as e:
        t = max((r.t for r in recorders()), default=0)
        raise LrscopeError(
            f"{what}: writing the store failed near iteration {t} ({e.strerror or e}); everything up to the "
            "last commit is intact: fix the cause and re-run the same command to resume") from None
    except KeyboardInterrupt:
        for r in recorders():
            if not r.ended:
                r.w.commit(status=S.STATUS_RUNNING, reason=f"interrupted near iteration {r.t}; re-run to resume")
        raise
    except Exception as e:
        for r in recorders():
            if not r.ended:
                with contextlib.suppress(OSError):
                    r.w.commit(status=S.STATUS_FAILED, reason=f"{type(e).__name__}: {e}")
        raise
