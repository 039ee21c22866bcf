"""The ``dp-tangent`` app: the Typer application, the options commands share, and the entry point.

Every mistake a user can make ends in one line on stderr and exit code 2 (no traceback); Ctrl-C
ends with exit code 130 after the library has recorded what it must (a reserved budget stays spent),
and so do SIGTERM and SIGHUP (``kill``, ``timeout``, a closed terminal, a scheduler stopping a job), with
128 + the signal's number as a shell reports it (143, 129).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

from ..errors import DPTangentError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Differentially private fine-tuning of tangent models: train, compose, report, forget.")


@app.callback()
def _root() -> None:
    """Differentially private fine-tuning of tangent models: train, compose, report, forget."""


WorkspaceOption = Annotated[Path, typer.Option("--workspace", "-w", help="Workspace directory.")]
DEFAULT_WORKSPACE = Path("dp-tangent-workspace")


def open_workspace(path: Path, *, finish: bool = True, read_only: bool = False):  # noqa: ANN202
    """The workspace at ``path`` (a one-line error if it is not one); ``finish=False`` for a command that must not
    change it, ``read_only`` for a check that must not write even its ledger's file (see ``Workspace.open``)."""
    from ..workspace import Workspace
    from ..workspace.names import WorkspaceIntegrityError

    listen_to_workspaces()
    try:
        return Workspace.open(path, finish=finish and not read_only, read_only=read_only)
    except WorkspaceIntegrityError as err:  # finishing a killed change found an edit: recorded; read, write nothing
        typer.secho(f"warning: {err}", err=True, fg=typer.colors.RED)
        return Workspace.open(path, finish=False)


def listen_to_workspaces() -> None:
    """Print as a note what a workspace does on its own (a killed change finished, an abandoned reservation failed):
    whichever command opened it, and whenever (taking its lock finishes them too)."""
    from ..workspace import notices

    notices.listen(lambda text: typer.echo(f"note: {text}", err=True))


def check_output_outside(ws, output: Path, allowed: str | None = None,  # noqa: ANN001
                         advice: str = "write it outside") -> None:
    """Refuse an output file (or a folder of the user's, ``advice`` saying what to do) inside the workspace
    (every file there must be accounted for by its log), except under its ``allowed`` folder of derived files."""
    from ..workspace import WorkspaceError

    target, root = output.expanduser().absolute().resolve(), ws.root.resolve()
    if (target == root or root in target.parents) and not (allowed and (root / allowed) in target.parents):
        where = f" (or under {ws.root / allowed})" if allowed else ""
        raise WorkspaceError(f"{output} is inside the workspace {ws.root}: {advice}{where}; every file in "
                             "a workspace must be accounted for by its audit log")


def busy(message: str):  # noqa: ANN202
    """A spinner on stderr for steps that can take seconds (accounting, retraining)."""
    from rich.console import Console

    return Console(stderr=True).status(message)


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: run the app, turning expected errors into one-line messages."""
    import warnings

    from privacy_accounting.bounds_cache import use_cache_dir, user_cache_dir

    from ..openmp import use_short_spin

    use_short_spin()  # before any command loads torch and its OpenMP runtime

    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    try:
        # Epsilons this user already computed are read from their private cache, not recomputed: a
        # command that prints one then needs neither dp_accounting (scipy) nor Opacus (torch).
        with use_cache_dir(user_cache_dir()), _termination_as_interrupt():
            code = app(args=argv, standalone_mode=False, prog_name="dp-tangent")  # Exit(n) comes back as n
        if code == 130:  # typer turns Ctrl-C into Exit(130)
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except (DPTangentError, OSError, ValueError) as err:  # OSError: a missing file, no permission, a full disk
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except typer.Abort as stop:  # click turns Ctrl-C into Abort
        if isinstance(stop.__cause__, EOFError):  # typer does the same with EOFError, yet no command reads stdin
            typer.secho(f"error: a file ended early (empty or truncated): {stop.__cause__}", err=True,
                        fg=typer.colors.RED)
            sys.exit(2)
        _interrupted(argv)
    except KeyboardInterrupt:
        _interrupted(argv)
    except typer.Exit as stop:
        sys.exit(stop.exit_code)
    except typer.TyperException as err:  # usage errors (typer's own click)
        if type(err).__name__ == "NoArgsIsHelpError":  # a group called alone: its help
            err.show()  # type: ignore[attr-defined]
            sys.exit(getattr(err, "exit_code", 0))
        ctx = getattr(err, "ctx", None)  # a missing or malformed argument: one line, and where to look
        usage = " ".join(ctx.get_usage().split()).removeprefix("Usage: ") if ctx is not None else ""
        hint = f" (usage: {usage}; see `{ctx.command_path} --help`)" if ctx is not None else ""
        message = " ".join(err.format_message().split())  # type: ignore[attr-defined]
        typer.secho(f"error: {message}{hint}", err=True, fg=typer.colors.RED)
        sys.exit(getattr(err, "exit_code", 2))
    except Exception as err:
        accounting = sys.modules.get("privacy_accounting.errors")  # loaded iff the error can come from it
        if accounting is None or not isinstance(err, accounting.PrivacyAccountingError):
            raise
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        sys.exit(2)


@contextlib.contextmanager
def _termination_as_interrupt() -> Iterator[None]:
    """Meanwhile SIGTERM and SIGHUP end the command as Ctrl-C does (where nobody else handles them): an unfinished
    run's reservations are marked failed and its workers stopped now, not found by the next command; like Ctrl-C,
    they are held back while a workspace change is committed (:mod:`dp_tangent.interrupts`)."""
    from ..interrupts import forget_received, interrupt

    forget_received()
    installed = {}
    with contextlib.suppress(ValueError):  # not the main thread: signals are not ours to handle
        for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL),
                             (signal.SIGHUP, signal.SIG_DFL)):
            if signal.getsignal(sig) is default:  # SIGINT too, as Python would: so that its exit status is known
                installed[sig] = signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, previous in installed.items():
            signal.signal(sig, previous)


#: The commands that reserve privacy budget (``forget`` when it retrains): an interrupted one keeps it spent.
SPENDING_COMMANDS = frozenset({"train", "forget", "demo"})


def _interrupted(argv: Optional[list[str]] = None) -> NoReturn:
    """Ctrl-C (exit 130), SIGTERM (143) or SIGHUP (129): saying what the library kept."""
    from ..interrupts import exit_status

    command = next(iter(argv if argv is not None else sys.argv[1:]), None)
    spent = "; a reserved budget stays spent" if command in SPENDING_COMMANDS else ""
    typer.secho(f"interrupted: nothing half-written was kept{spent}", err=True)
    sys.exit(exit_status())
