"""Where a run's data live while it trains: the data placement.

- ``device``: both splits whole on the training device; minibatches are gathered there by index
  (the default while the data fit: nothing crosses the bus per step);
- ``host``: both splits in host memory (pinned when the device is CUDA; uint8 stays uint8); each
  minibatch is gathered by index on the host and copied to the device asynchronously, the next
  step's batch gathered and copied by a helper thread (on a CUDA side stream) while the current
  step computes (training on a CPU, the step's own thread gathers: nothing to overlap);
- ``mmap``: both splits read from memory-mapped ``.npy`` files (the dataset cache of
  `train/data.py`, or a spill file for datasets that are not cached), gathered per batch in sorted
  order (sequential reads) and copied like ``host``.

``auto`` picks the first that fits: device when the dataset's bytes are at most the device
budget, host when at most the host budget, mmap otherwise. The budgets are `SAFETY` × the free
device memory (CUDA: ``torch.cuda.mem_get_info``; CPU: the host's available memory) and
`SAFETY` × the host's available memory, or exactly the bytes in ``$LRSCOPE_DEVICE_BUDGET_BYTES``
/ ``$LRSCOPE_HOST_BUDGET_BYTES`` when set (tests, or a machine shared with other jobs).

Every placement gives the same minibatches and the same evaluation chunks, so the stores are
bitwise equal (tested): the placement is an execution detail, outside the run id, and the one a
run used is recorded in its store's root attrs (``data_placement``).
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch

    from .recipes import DataBundle

PLACEMENTS = ("device", "host", "mmap")
PLACED_TEXT = {"device": "on the device", "host": "in host memory", "mmap": "memory-mapped from disk"}
DEVICE_BUDGET_ENV = "LRSCOPE_DEVICE_BUDGET_BYTES"
HOST_BUDGET_ENV = "LRSCOPE_HOST_BUDGET_BYTES"
SAFETY = 0.5  # the data may take at most this share of the free memory (the model, activations and
# the optimizer need the rest on a device; the process and page cache on the host)


# ----------------------------------------------------------------------------- the choice
def dataset_bytes(bundle: DataBundle) -> int:
    """Bytes of the splits' inputs and labels (train, test, validation) as held in memory."""
    return sum(t.element_size() * t.numel() for sp in (getattr(bundle, s) for s in bundle.splits)
               for t in (sp.x, sp.y, sp.b, sp.index))


def _env_bytes(name: str) -> int | None:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return None
    try:
        v = int(float(text))
    except ValueError:
        raise ConfigError(f"${name} must be a number of bytes, got {text!r}") from None
    if v < 0:
        raise ConfigError(f"${name} must be a number of bytes >= 0, got {text!r}")
    return v


def check_budgets() -> None:
    """Raise ConfigError if a budget variable is set to something that is not a byte count."""
    _env_bytes(DEVICE_BUDGET_ENV)
    _env_bytes(HOST_BUDGET_ENV)


def host_available() -> int:
    """The host memory available to new allocations (Linux: MemAvailable), in bytes."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0


def device_budget(device: torch.device) -> int:
    forced = _env_bytes(DEVICE_BUDGET_ENV)
    if forced is not None:
        return forced
    if device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(SAFETY * free)
    return int(SAFETY * host_available())


def host_budget() -> int:
    forced = _env_bytes(HOST_BUDGET_ENV)
    return forced if forced is not None else int(SAFETY * host_available())


def choose(requested: str, nbytes: int, device: torch.device) -> str:
    """The placement to use: `requested` unless it is "auto", then the first that fits."""
    if requested != "auto":
        if requested not in PLACEMENTS:
            raise ConfigError(f"unknown data placement {requested!r}; valid: auto, {', '.join(PLACEMENTS)}")
        return requested
    if nbytes <= device_budget(device):
        return "device"
    if nbytes <= host_budget():
        return "host"
    return "mmap"


# ----------------------------------------------------------------------------- the sources
class HostData:
    """One split's inputs in host memory or memory-mapped, served to `device` by index (`take`) or
    in consecutive chunks (`chunks`, for evaluation passes)."""

    def __init__(self, x: torch.Tensor, device: torch.device, mapped: bool):
        import torch

        self.device, self.mapped = device, mapped
        self.cuda = device.type == "cuda"
        self.x = x
        self.shape, self.dtype = tuple(x.shape), x.dtype
        self.ndim = x.ndim
        self._pool: ThreadPoolExecutor | None = None
        self.stream = torch.cuda.Stream(device) if self.cuda else None

    def __len__(self) -> int:
        return self.shape[0]

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """Host tensor of rows `idx` (any shape), pinned on CUDA; mmap: read in sorted order."""
        import torch

        flat = idx.reshape(-1)
        out = torch.empty((len(flat), *self.shape[1:]), dtype=self.dtype, pin_memory=self.cuda)
        if self.mapped:
            srt, order = torch.sort(flat)
            out.index_copy_(0, order, self.x.index_select(0, srt))
        else:
            torch.index_select(self.x, 0, flat, out=out)
        return out.view(*idx.shape, *self.shape[1:])

    def to_device(self, *hosts: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], object]:
        """Host tensors -> the device, asynchronously on CUDA (on this source's side stream), and
        the event that marks the copies done (None off CUDA) for `ready`."""
        import torch

        if not self.cuda:
            return hosts, None
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            out = tuple(h.to(self.device, non_blocking=True) for h in hosts)
            done = torch.cuda.Event()
            done.record(self.stream)
        return out, done

    def ready(self, done, *tensors: torch.Tensor) -> None:
        """Make the current stream wait for the copies of `to_device` (CUDA; else nothing), and
        tell the allocator that `tensors` are used there."""
        if done is None:
            return
        import torch

        cur = torch.cuda.current_stream(self.device)
        cur.wait_event(done)
        for t in tensors:
            t.record_stream(cur)

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows `idx` on the device (synchronously usable)."""
        (out,), done = self.to_device(self.gather(idx.cpu()))
        self.ready(done, out)
        return out

    def chunk(self, i: int, batch: int):
        import torch

        part = self.x[i:i + batch]
        if not self.cuda:
            return (part.clone() if self.mapped else part,), None
        host = torch.empty(part.shape, dtype=self.dtype, pin_memory=True)
        host.copy_(part)
        return self.to_device(host)

    def chunks(self, batch: int) -> Iterator[torch.Tensor]:
        """Consecutive chunks of `batch` rows on the device (the boundaries of ``x.split(batch)``),
        the next one read and copied by a helper thread while the caller uses the current one."""
        pool = self.pool()
        starts = list(range(0, len(self), batch))
        nxt: Future | None = pool.submit(self.chunk, starts[0], batch) if starts else None
        for k in range(len(starts)):
            (cur,), done = nxt.result()
            nxt = pool.submit(self.chunk, starts[k + 1], batch) if k + 1 < len(starts) else None
            self.ready(done, cur)
            yield cur

    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="lrscope-data")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class Feeder:
    """The minibatches of a training loop from host or mapped data: `get(t)` returns step t's
    inputs and labels on the device and starts gathering and copying step `t + 1`'s (a helper
    thread; on CUDA a side stream) so that it overlaps step t's compute. `order(t)` gives step t's
    sample positions (a CPU int64 tensor of any shape: (batch,) or (runs, batch)); `invalidate()`
    drops a prefetched batch whose order has changed (a batched run left the stack)."""

    def __init__(self, x: HostData, y: torch.Tensor, order: Callable[[int], torch.Tensor], limit: int):
        self.x, self.y, self.order, self.limit = x, y, order, limit
        self._next: tuple[int, Future] | None = None
        # ahead: a copy to overlap (CUDA) or a file to read (mmap); a CPU run on host data gathers
        # in its own thread (a thread hop per step costs more than the gather there)
        self.ahead = x.cuda or x.mapped

    def _prepare(self, t: int):
        idx = self.order(t)
        xb = self.x.gather(idx)
        yb = self.y[idx]
        return self.x.to_device(xb, yb.pin_memory() if self.x.cuda else yb)

    def get(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._next is not None and self._next[0] == t:
            (xb, yb), done = self._next[1].result()
            self._next = None
        else:
            self.invalidate()
            (xb, yb), done = self._prepare(t)
        self.x.ready(done, xb, yb)
        if self.ahead and t + 1 < self.limit:
            self._next = (t + 1, self.x.pool().submit(self._prepare, t + 1))
        return xb, yb

    def invalidate(self) -> None:
        """Drop the prefetched batch (after letting its gather finish: it reads shared state); an
        error there is not this caller's (the step that would have used it never runs)."""
        if self._next is not None:
            pending, self._next = self._next[1], None
            try:
                pending.result()
            except Exception:
                pass


def spill(x: torch.Tensor, folder: str | os.PathLike | None) -> torch.Tensor:
    """`x` written to a `.npy` file in `folder` (a temporary folder when None) and mapped back;
    the file is unlinked at once (the mapping keeps it until the tensor is freed)."""
    from .data import map_npy

    if folder is not None:
        os.makedirs(folder, exist_ok=True)
    fd, name = tempfile.mkstemp(suffix=".npy", prefix="lrscope-spill-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, x.numpy(), allow_pickle=False)
        return map_npy(name)
    finally:
        os.unlink(name)


class Placed:
    """A dataset's inputs placed for training: `train`, `test` and `val` (None without a validation
    split) are device tensors (placement "device") or `HostData`; `Y` the train labels on the device
    (labels are small)."""

    def __init__(self, bundle: DataBundle, placement: str, device: torch.device):
        from .data import cache_dir, is_mapped

        self.placement, self.device = placement, device
        self.Y = bundle.train.y.to(device)
        self.y_host = bundle.train.y
        self.val = None
        if placement == "device":
            self.train = _on_device(bundle.train.x, device)
            self.test = _on_device(bundle.test.x, device)
            if bundle.val is not None:
                self.val = _on_device(bundle.val.x, device)
            return
        mapped = placement == "mmap"
        xs = []
        for x in (bundle.train.x, bundle.test.x, *((bundle.val.x,) if bundle.val is not None else ())):
            if mapped and not is_mapped(x):
                x = spill(x, cache_dir())
            elif not mapped:
                x = x.clone() if is_mapped(x) else x
                if device.type == "cuda":
                    x = x.pin_memory()
            xs.append(HostData(x, device, mapped))
        self.train, self.test = xs[:2]
        self.val = xs[2] if len(xs) > 2 else None

    @property
    def on_device(self) -> bool:
        return self.placement == "device"

    def take_test(self, idx) -> torch.Tensor:
        """Test rows `idx` on the device (the probe subset)."""
        import torch

        idx = torch.as_tensor(idx, dtype=torch.long)
        if self.on_device:
            return self.test[idx.to(self.device)]
        return self.test.take(idx)

    def feeder(self, order: Callable[[int], torch.Tensor], limit: int) -> Feeder:
        return Feeder(self.train, self.y_host, order, limit)

    def close(self) -> None:
        if not self.on_device:
            self.train.close()
            self.test.close()
            if self.val is not None:
                self.val.close()


def _on_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    from .data import is_mapped

    out = x.to(device)
    if out is x and is_mapped(x):  # CPU training: hold the data in memory, not in the file
        out = x.clone()
    return out
