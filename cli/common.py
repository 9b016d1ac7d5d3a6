"""Shared CLI plumbing: user errors are one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import click

from ..errors import LrscopeError, RunInterrupted


class OneLineErrors(click.Group):
    """A click group whose usage errors and LrscopeErrors print as a single line (exit 2)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        except click.exceptions.ClickException as e:
            ctx = getattr(e, "ctx", None)
            where = f"{ctx.command_path}: " if ctx is not None else ""
            echo(f"Error: {where}{_flat(e.format_message())}", err=True)
            sys.exit(2)
        except RunInterrupted as e:
            echo(_flat(str(e)), err=True)
            sys.exit(128 + int(e.signum))
        except LrscopeError as e:
            echo(f"Error: {_flat(str(e))}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("Interrupted; re-run the same command to resume.", err=True)
            sys.exit(130)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def _flat(msg: str) -> str:
    return " ".join(msg.split())


def printable(text: str) -> str:
    """`text` safe for a terminal: every character that is not printable (control characters such
    as ESC, BEL, CR and newline, C1 controls, Unicode separators and bidi overrides) is shown as its
    escape (``\\x1b``, ``\\n``, ``\\u202e``). Strings read from a store are data: printed through
    this they can neither drive the terminal nor start a line of their own."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def echo(line: str = "", err: bool = False) -> None:
    """click.echo of one line made `printable` (call it once per line of a table)."""
    click.echo(printable(str(line)), err=err)


def paragraphs(text: str, indent: str = "    ", width: int = 100, hang: str = "") -> list[str]:
    """A docstring-like description as lines: each paragraph reflowed to `width` and indented
    (continuation lines by `hang` more); ``code`` reads as `code`."""
    import textwrap

    out = []
    for para in text.split("\n\n"):
        if para.strip():
            flat = " ".join(para.split()).replace("``", "`")
            out += textwrap.wrap(flat, width, initial_indent=indent, subsequent_indent=indent + hang,
                                 break_on_hyphens=False)
    return out


def parse_floats(text: str, name: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LrscopeError(f"{name}: expected comma-separated numbers, got {text!r}") from None


def parse_ints(text: str, name: str, *, lo: int = 1) -> list[int]:
    """Comma-separated integers (2.0 passes as 2; inf, nan, 1.5 and words do not)."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            v = int(part)
        except ValueError:
            try:
                f = float(part)
            except ValueError:
                f = math.nan
            if not (math.isfinite(f) and f == int(f)):
                raise LrscopeError(f"{name}: expected comma-separated integers, got {text!r}") from None
            v = int(f)
        if v < lo:
            raise LrscopeError(f"{name}: expected integers >= {lo}, got {text!r}")
        out.append(v)
    if not out:
        raise LrscopeError(f"{name}: expected comma-separated integers, got {text!r}")
    return out


def check_workers(workers: int, name: str = "--workers") -> int:
    if not 1 <= workers <= MAX_WORKERS:
        raise LrscopeError(f"{name} must be in [1, {MAX_WORKERS}], got {workers}")
    return workers


MAX_WORKERS = 1024


def check_out_dir(path, name: str = "--out") -> Path:
    """An output folder that exists, or whose nearest existing ancestor is a folder we may write
    in. Only looks: creates nothing (the command creates it once its inputs were checked)."""
    from ..store.nesting import check_not_in_store

    text = str(path)
    if not text.strip():
        raise LrscopeError(f"{name}: empty path")
    check_path_lengths(text, name)
    p = Path(text)
    if os.path.lexists(p) and not p.exists():
        raise LrscopeError(f"{name} {text}: a broken symbolic link")
    check_not_in_store(p, name)
    if p.exists():
        if not p.is_dir():
            raise LrscopeError(f"{name} {text}: exists and is not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise LrscopeError(f"{name} {text}: folder is not writable")
        return p
    up = p.absolute().parent
    while not up.exists():
        if os.path.lexists(up):
            raise LrscopeError(f"{name} {text}: {up} is a broken symbolic link")
        up = up.parent
    if not up.is_dir():
        raise LrscopeError(f"{name} {text}: {up} is not a folder")
    if not os.access(up, os.W_OK | os.X_OK):
        raise LrscopeError(f"{name} {text}: cannot create it, {up} is not writable")
    return p


def check_out_file(path, name: str = "--output") -> Path:
    """An output file that can be written: not a folder, in a folder that exists or can be
    created. Creates nothing."""
    text = str(path)
    if not text.strip():
        raise LrscopeError(f"{name}: empty path")
    check_path_lengths(text, name)
    p = Path(text)
    from ..store.nesting import check_not_in_store

    check_not_in_store(p, name)
    if p.is_dir():
        raise LrscopeError(f"{name} {text}: is a folder")
    if p.exists():
        if not os.access(p, os.W_OK):
            raise LrscopeError(f"{name} {text}: not writable")
        return p
    check_out_dir(p.absolute().parent, name)
    return p


def check_address(address: str, name: str = "--address") -> str:
    """A host address to listen on: an IP address (v4 or v6) or a name that resolves; checked for
    its form and resolution only (whether this machine has it is found out when binding)."""
    import ipaddress
    import socket

    if not isinstance(address, str) or not address.strip():
        raise LrscopeError(f"{name}: empty address; use an address of this machine, such as 127.0.0.1")
    try:
        ipaddress.ip_address(address)
        return address
    except ValueError:
        pass
    try:
        socket.getaddrinfo(address, None)
    except (OSError, UnicodeError) as e:
        raise LrscopeError(f"{name} {printable(address)}: not an IP address or a host name that resolves "
                           f"({getattr(e, 'strerror', None) or e})") from None
    return address


def check_path_lengths(path, name: str = "--out") -> None:
    """LrscopeError when a component of `path` is longer than the file system allows (255 bytes on
    most), before anything is created."""
    limit = 255
    try:
        limit = os.pathconf(Path(path).absolute().anchor or "/", "PC_NAME_MAX")
    except (OSError, ValueError):
        pass
    for part in Path(path).parts:
        if len(os.fsencode(part)) > limit:
            raise LrscopeError(f"{name}: the path component {printable(part[:40])}… is {len(os.fsencode(part))} "
                               f"bytes, longer than the file system's limit of {limit}")


def check_scheduler(scheduler: str | None, name: str = "--scheduler") -> str | None:
    """None, 'local', or a dask scheduler address with a port (tcp://host:8786, host:8786, tls://...):
    checked for its form only (whether it answers is found out when connecting)."""
    if scheduler is None or scheduler == "local":
        return scheduler
    hint = "expected 'local' or a scheduler address such as tcp://host:8786"
    try:
        from distributed.comm.addressing import (
            normalize_address,
            parse_address,
            parse_host_port,
        )

        proto, loc = parse_address(normalize_address(scheduler))
        from distributed.comm.registry import backends

        if proto not in backends:
            raise ValueError(f"unknown scheme {proto!r} (known: {', '.join(sorted(backends))})")
        if proto in ("tcp", "tls"):
            _, port = parse_host_port(loc)
            if not 0 < int(port) < 65536:
                raise ValueError(f"port {port} out of range")
    except (ValueError, TypeError) as e:
        raise LrscopeError(f"{name} {scheduler!r}: {e}; {hint}") from None
    return scheduler
