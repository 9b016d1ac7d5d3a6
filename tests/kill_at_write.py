"""`lrtrain` that SIGKILLs itself at its n-th write to a Zarr store (LRSCOPE_KILL_AT_WRITE=n): a
kill between any two file writes, where LRSCOPE_CRASH_AT only has named points. n = 0 kills
nothing and prints the number of writes (store sets and deletes) to stderr at exit.
Used by tests/test_crash_safety.py."""

import atexit
import os
import signal
import sys

import torch
import zarr.storage

torch.set_num_threads(1)
AT = int(os.environ.get("LRSCOPE_KILL_AT_WRITE", "0"))
count = 0


def counted(method):
    async def wrapper(self, key, *args, **kwargs):
        global count
        count += 1
        if count == AT:
            os.kill(os.getpid(), signal.SIGKILL)
        return await method(self, key, *args, **kwargs)
    return wrapper


zarr.storage.LocalStore.set = counted(zarr.storage.LocalStore.set)
zarr.storage.LocalStore.delete = counted(zarr.storage.LocalStore.delete)
if AT == 0:
    atexit.register(lambda: print(f"zarr writes: {count}", file=sys.stderr))

from lrscope.cli.train import main  # noqa: E402

main()
