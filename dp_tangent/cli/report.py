"""``dp-tangent report``: the workspace's privacy report as Markdown, JSON or HTML.

The ledger's figures with what only the workspace knows (record counts per shard, deletion
requests and their deadlines, the audit log verified now), gathered read-only by
:mod:`dp_tangent.workspace.report_context`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import DEFAULT_WORKSPACE, WorkspaceOption, app, busy, check_output_outside, open_workspace

RENDERERS = {"md": "to_markdown", "json": "to_json", "html": "to_html"}
#: The format a report file's suffix names.
SUFFIXES = {".md": "md", ".markdown": "md", ".json": "json", ".html": "html", ".htm": "html"}


@app.command()
def report(
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    format: Annotated[Optional[str], typer.Option(
        "--format", "-f", help="md, json or html (default: from the --output file's suffix, else md).")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write here instead of stdout (`-`: stdout).")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(
        help="A checkpoint kept outside the workspace (from `audit checkpoint`): the report says whether the log "
             "extends it (default: the latest one sealed into a deletion certificate).")] = None,
    verifier_key: Annotated[Optional[str], typer.Option(
        help="The checkpoint's verifier key (from `audit keygen`): its signature is checked.")] = None,
) -> None:
    """The privacy report: per model who is protected and at what, the data, deletion requests, the audit
    log, then every shard, component and accountant for specialists. Exit 1 if the audit log does not verify
    (the report is still written)."""
    from ..io import atomic_write_text
    from ..workspace.audit_errors import AuditChainError
    from ..workspace.checkpoint import CheckpointError
    from ..workspace.report_context import load_checkpoint, privacy_report

    output = None if output == Path("-") else output
    format = _format(format, output)
    if verifier_key is not None and checkpoint is None:
        raise CheckpointError("--verifier-key checks a --checkpoint; give both")
    try:
        ws = open_workspace(workspace)
    except AuditChainError:  # a damaged log cannot finish interrupted work: read as it is, the report says so
        ws = open_workspace(workspace, finish=False)
    if output is not None:
        check_output_outside(ws, output, allowed="reports")
        _check_report_name(ws, output)
        _check_replaces_a_report(output)
    kept = load_checkpoint(ws, checkpoint, verifier_key) if checkpoint is not None else None
    with busy("verifying the audit log and computing every accountant's epsilon…"):
        report = privacy_report(ws, report_dir=output.expanduser().absolute().parent if output else None,
                                checkpoint=kept, curves=format != "md")  # Markdown draws no curve
        text = getattr(report, RENDERERS[format])()
        sections = report.workspace
    if output is None:
        typer.echo(text)
    else:
        atomic_write_text(output, text)
        typer.echo(f"wrote {output}")
    if sections.audit is not None and not sections.audit.verified:
        typer.secho(f"warning: the audit log did not verify ({len(sections.audit.problems)} problem(s)); "
                    "the report says so", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)


def _check_replaces_a_report(output: Path) -> None:
    """Only a report is written over: an existing file that is not one (a key, a data file, a settings file) is
    refused. A report is a UTF-8 text file (not a link; whatever its name: a report was written to it) with the
    report's notice in it, as its format writes it (HTML escapes its apostrophes, JSON would escape non-ASCII)."""
    import html
    import json

    from privacy_accounting.report import NOTICE

    from ..workspace import WorkspaceError

    path = output.expanduser()
    notices = (NOTICE, html.escape(NOTICE), json.dumps(NOTICE)[1:-1])
    if path.exists() and not (path.is_file() and not path.is_symlink() and any(
            n in path.read_bytes().decode("utf-8", errors="replace") for n in notices)):
        raise WorkspaceError(f"{output} exists and is not a privacy report; give a new file name or remove it first")


def _check_report_name(ws, output: Path) -> None:  # noqa: ANN001
    """Under the workspace's reports folder only reports are kept (``audit verify`` checks): a report's suffix."""
    from ..workspace import WorkspaceError
    from ..workspace.audit_log import REPORT_SUFFIXES

    if ws.root.resolve() in output.expanduser().absolute().resolve().parents and output.suffix not in REPORT_SUFFIXES:
        raise WorkspaceError(f"{output}: a report in the workspace's reports folder needs a "
                             f"{', '.join(REPORT_SUFFIXES)} name (audit verify accepts nothing else there)")


def _format(given: str | None, output: Path | None) -> str:
    """The format asked for, else the one the output file's suffix names, else Markdown; a format that
    contradicts the file's suffix (``-f md -o report.html``) is refused."""
    if given is not None and given not in RENDERERS:
        raise typer.BadParameter(f"--format must be one of {', '.join(RENDERERS)}, got {given!r}")
    named = SUFFIXES.get(output.suffix.lower()) if output is not None else None
    if given is not None and named is not None and given != named:
        raise typer.BadParameter(f"--format {given} but {output} is named as {named}: give a matching file name, "
                                 "or leave out --format")
    return given or named or "md"

