"""Shared CLI plumbing: user errors are one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import sys

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
            click.echo(f"Error: {where}{_flat(e.format_message())}", err=True)
            sys.exit(2)
        except RunInterrupted as e:
            click.echo(_flat(str(e)), err=True)
            sys.exit(128 + int(e.signum))
        except LrscopeError as e:
            click.echo(f"Error: {_flat(str(e))}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("Interrupted; re-run the same command to resume.", err=True)
            sys.exit(130)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def _flat(msg: str) -> str:
    return " ".join(msg.split())


def parse_floats(text: str, name: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LrscopeError(f"{name}: expected comma-separated numbers, got {text!r}") from None
