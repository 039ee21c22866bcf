"""The ``dp-tangent`` command line: a thin layer over the Python API.

Every mistake a user can make ends in one line on stderr and exit code 2 (no traceback); Ctrl-C
ends with exit code 130 after the library has recorded what it must (a reserved budget stays spent).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from privacy_accounting import PrivacyAccountingError

from .errors import DPTangentError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Differentially private fine-tuning of tangent models: train, compose, report, forget.")

@app.callback()
def _root() -> None:
    """Differentially private fine-tuning of tangent models: train, compose, report, forget."""


WorkspaceOption = Annotated[Path, typer.Option("--workspace", "-w", help="Workspace directory.")]
DEFAULT_WORKSPACE = Path("dp-tangent-workspace")


@app.command()
def demo(
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    epsilon: Annotated[Optional[float], typer.Option(help="Target epsilon of every component (default: 8).")] = None,
    shards: Annotated[Optional[int], typer.Option(help="Disjoint private shards (default: 4).")] = None,
    trainable: Annotated[Optional[str], typer.Option(help="What to linearize, e.g. 'head' or 'blocks[-1:]' (default: head).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Local worker processes training the shards "
                                                        "(default: one per core, at most one per shard).")] = None,
    quick: Annotated[bool, typer.Option(help="A smaller run (fewer records and epochs), for smoke tests.")] = False,
) -> None:
    """The whole story on the embedded default: packaged EfficientNet-Lite0 + scikit-learn digits."""
    from dataclasses import replace

    from .demo import DemoConfig, run_demo

    given = {"epsilon": epsilon, "shards": shards, "trainable": trainable, "workers": workers}
    config = replace(DemoConfig(), **{k: v for k, v in given.items() if v is not None})
    run_demo(workspace, config.quick() if quick else config)


def _workspace(path: Path):  # noqa: ANN202
    from .workspace import Workspace

    return Workspace.open(path)


def _busy(message: str):  # noqa: ANN202
    """A spinner on stderr for steps that can take seconds (accounting, retraining)."""
    from rich.console import Console

    return Console(stderr=True).status(message)


@app.command()
def report(
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    format: Annotated[str, typer.Option("--format", "-f", help="md, json or html.")] = "md",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """The privacy budget report: every shard, component and composed model, with the statement."""
    from privacy_accounting import build_report

    from .io import atomic_write_text

    renderers = {"md": "to_markdown", "json": "to_json", "html": "to_html"}
    if format not in renderers:
        raise typer.BadParameter(f"--format must be one of {', '.join(renderers)}, got {format!r}")
    ledger = _workspace(workspace).ledger
    with _busy("computing every accountant's epsilon…"):
        text = getattr(build_report(ledger), renderers[format])()
    if output is None:
        typer.echo(text)
    else:
        atomic_write_text(output, text)
        typer.echo(f"wrote {output}")


budget_app = typer.Typer(help="Privacy budgets per data source or shard.", no_args_is_help=True)
app.add_typer(budget_app, name="budget")


@budget_app.command("set")
def budget_set(
    target: Annotated[str, typer.Argument(help="DATA_SOURCE or DATA_SOURCE/SHARD.")],
    epsilon: Annotated[float, typer.Argument(help="Epsilon limit.")],
    delta: Annotated[float, typer.Option(help="Delta at which the limit holds.")] = 1e-5,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Set the epsilon limit of a data source (every shard of it) or of one shard."""
    source, _, shard = target.partition("/")
    budget = _workspace(workspace).set_budget(source, shard or None, epsilon, delta)
    typer.echo(f"budget {target}: epsilon {budget.epsilon:g} at delta {budget.delta:g}")


@budget_app.command("show")
def budget_show(workspace: WorkspaceOption = DEFAULT_WORKSPACE) -> None:
    """Spent and remaining epsilon of every shard."""
    import math

    from rich.console import Console
    from rich.table import Table

    ledger = _workspace(workspace).ledger
    table = Table()
    for column in ("data source", "shard", "spent ε", "limit ε", "remaining ε", "δ"):
        table.add_column(column)
    for source, shard in ledger.shards():
        limit = ledger.budget(source, shard)
        events = ledger.events(data_source=source, shard=shard)
        delta = limit.delta if limit else min((e.delta for e in events), default=None)
        spent = ledger.shard_spend(source, shard, delta=delta).epsilon if delta else 0.0
        remaining = ledger.remaining(source, shard)
        table.add_row(source, shard, f"{spent:.3g}" if math.isfinite(spent) else "∞ (non-private)",
                      f"{limit.epsilon:g}" if limit else "no budget set",
                      "-" if remaining is None else f"{remaining:.3g}", f"{delta:g}" if delta else "-")
    Console().print(table)


audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(workspace: WorkspaceOption = DEFAULT_WORKSPACE) -> None:
    """Recompute the chain and every artifact digest; exit 0 only if all check out."""
    result = _workspace(workspace).audit.verify()
    typer.echo(str(result))
    if not result.ok:
        raise typer.Exit(1)


@audit_app.command("log")
def audit_log(workspace: WorkspaceOption = DEFAULT_WORKSPACE) -> None:
    """Print the audit log, one entry per line."""
    for entry in _workspace(workspace).audit.entries():
        outputs = ", ".join(a.name for a in entry.outputs)
        typer.echo(f"{entry.seq:>4}  {entry.time}  {entry.operator:<10} {entry.operation:<12} {outputs}")


@app.command()
def compose(
    components: Annotated[list[str], typer.Argument(help="Component names in the workspace.")],
    name: Annotated[str, typer.Option("--name", help="Name of the composed model.")],
    weights: Annotated[Optional[str], typer.Option(help="Comma-separated weights, one per component.")] = None,
    method: Annotated[str, typer.Option(help="mean, sum or task-arithmetic.")] = "mean",
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Compose components (theta0 + weighted sum of deltas) into a model of one model's cost."""
    try:
        parsed = [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        raise typer.BadParameter(f"--weights must be comma-separated numbers, got {weights!r}") from None
    ws = _workspace(workspace)
    with _busy("composing…"):
        record = ws.compose_model(name, components, parsed, method.replace("-", "_"))
    typer.echo(f"composed {name} from {', '.join(record.component_names)} ({record.method})")


@app.command()
def forget(
    record_ids: Annotated[list[str], typer.Argument(help="Record ids to delete.")],
    request_id: Annotated[Optional[str], typer.Option(help="Request id (default: a timestamp).")] = None,
    retrain: Annotated[bool, typer.Option(help="Retrain affected shards without the records (needs registered data).")] = False,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Serve a deletion request: remove every component holding the records, recompose, certify."""
    from datetime import datetime, timezone

    from . import forget as forgetting
    from .sources import shard_records_for

    ws = _workspace(workspace)
    if not ws.list_components():
        raise typer.BadParameter(f"workspace {workspace} has no components: nothing to forget")
    now = datetime.now(timezone.utc)
    request = forgetting.DeletionRequest(request_id=request_id or now.strftime("request-%Y%m%dT%H%M%S"),
                                         record_ids=tuple(record_ids), received_at=now)
    with _busy("serving the deletion request" + (" (retraining affected shards)…" if retrain else "…")):
        result = forgetting.forget(ws, request, retrain=retrain,
                                   shard_records=shard_records_for(ws) if retrain else None)
    typer.echo(result.message)
    typer.echo(f"certificate: {result.json_path}\n{result.text_path.read_text()}")


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: run the app, turning expected errors into one-line messages."""
    import warnings

    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    try:
        code = app(args=argv, standalone_mode=False)  # without standalone mode, Exit(n) comes back as n
        if code == 130:  # typer turns Ctrl-C into Exit(130)
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except (DPTangentError, PrivacyAccountingError, FileNotFoundError, PermissionError, ValueError) as err:
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):  # click turns Ctrl-C into Abort
        typer.secho("interrupted: nothing half-written was kept; a reserved budget stays spent", err=True)
        sys.exit(130)
    except typer.Exit as stop:
        sys.exit(stop.exit_code)
    except typer.TyperException as err:  # usage errors: show usage and the message
        err.show()  # type: ignore[attr-defined]
        sys.exit(getattr(err, "exit_code", 2))


from . import cli_train  # noqa: F401,E402 -- registers train/evaluate/predict
