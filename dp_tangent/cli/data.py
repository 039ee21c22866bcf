"""``dp-tangent data list | relocate``: the data sources the workspace re-reads (retraining, evaluate, predict)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import DEFAULT_WORKSPACE, WorkspaceOption, app, busy, check_output_outside, open_workspace

data_app = typer.Typer(help="Data sources the workspace re-reads: where they are, and moving them.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("list")
def data_list(workspace: WorkspaceOption = DEFAULT_WORKSPACE) -> None:
    """Each registered data source: how it is read, from where, and how many of its registered records it holds now
    (records a deletion request removed are not counted), its test split's among them."""
    from rich.console import Console
    from rich.table import Table

    from ..workspace.data_sources import PUBLIC_TABLE, registry
    from ..workspace.tombstones import Tombstones

    ws = open_workspace(workspace, finish=False)
    sources = registry(ws)
    if not sources.sources:
        typer.echo(f"no data source is registered in {ws.root} (`dp-tangent train` registers a recipe's data)")
        return
    deleted = set(Tombstones(ws.root).read())
    table = Table("data source", "read as", "records", "of them test")
    table.add_column("from", overflow="fold")  # a path: folded, never cut
    for name, entry in sorted(sources.sources.items()):
        data = entry.get("data", {}) if isinstance(entry.get("data"), dict) else {}
        content = sources.content.get(name)
        # a deletion takes a record's digest out of ``tags``; a test split's list keeps its commitment (tombstoned)
        table.add_row(name, str(entry.get("loader")), "-" if content is None else str(len(content.tags)),
                      "-" if content is None else str(len(set(content.test) - deleted)),
                      str(data.get("path") or data.get("root") or "(embedded)")
                      + (f"\npublic table: {data[PUBLIC_TABLE]}" if data.get(PUBLIC_TABLE) else ""))
    Console().print(table)


@data_app.command("relocate")
def data_relocate(
    name: Annotated[str, typer.Argument(help="The data source (as `dp-tangent data list` names it).")],
    location: Annotated[Path | None, typer.Argument(
        help="Its file or folder's new place (leave out to move only its public table).")] = None,
    public_table: Annotated[Path | None, typer.Option(
        "--public-table", help="A table's public table (public_path) moved here.")] = None,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Re-point a data source whose file or folder moved (or a table's public table): every registered record must be
    there, unchanged (by its keyed digest, scaled features included), and no other; nothing is trained and no budget
    spent. Logged."""
    from ..workspace.data_sources import PUBLIC_TABLE, source_of

    if location is None and public_table is None:
        raise typer.BadParameter("give the data's new place, or --public-table with its public table's")
    ws = open_workspace(workspace)
    # before the lock's check, which would record the data put there as files added behind the tool's back
    for place in (location, public_table):
        if place is not None:
            check_output_outside(ws, place, advice="move it out of the workspace, then relocate it")
    with busy(f"checking {location or public_table} against data source {name!r}"):
        with ws.lock():
            before = source_of(ws, name)
            moved = ws.relocate_data_source(name, location, public_table=public_table)
    was = before.model_dump(mode="json")["data"] if before is not None else {}
    fields = [f for f in ("path", "root") if f in was and location is not None] + (
        [PUBLIC_TABLE] if public_table is not None else [])
    if moved is None:
        places = " and ".join(f"{_what(f)} from {was[f]}" for f in fields)
        typer.echo(f"data source {name!r} reads {places} already: nothing was changed")
        return
    now = moved.model_dump(mode="json")["data"]
    changes = "; ".join(f"{_what(f)} read from {now[f]}" + ("" if now[f] == was.get(f) else f" (was {was.get(f)})")
                        for f in fields)
    typer.echo(f"data source {name!r}: {changes}; every registered record found unchanged")


def _what(field: str) -> str:
    from ..workspace.data_sources import PUBLIC_TABLE

    return "its public table" if field == PUBLIC_TABLE else "its data"
