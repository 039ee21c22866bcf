"""``dp-tangent compose``: components composed into one model."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .app import DEFAULT_WORKSPACE, WorkspaceOption, app, busy, open_workspace


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
    if method.replace("-", "_") not in ("mean", "sum", "task_arithmetic", "regmean"):
        raise typer.BadParameter(f"--method must be mean, sum or task-arithmetic, got {method!r}")
    if method.replace("-", "_") == "regmean":  # its merge data (public inputs per component) has no CLI form
        raise typer.BadParameter("--method regmean needs public merge inputs per component, which only the Python "
                                 "API takes (Workspace.compose_model(..., method='regmean', merge_data=...))")
    ws = open_workspace(workspace)
    if _composed_already(ws, name, components, parsed, method.replace("-", "_")):
        typer.echo(f"{name} is composed from {', '.join(components)} ({method}) already; nothing was changed")
    else:
        with busy("composing…"):
            record = ws.compose_model(name, components, parsed, method.replace("-", "_"))
        typer.echo(f"composed {name} from {', '.join(record.component_names)} ({record.method})")
    _note_without_dp(ws, name, components)


def _note_without_dp(ws, name: str, components: list[str]) -> None:  # noqa: ANN001
    """Say now, not first when a release is refused, that a component trained without DP leaves the model none."""
    from ..components.component import read_metadata

    unguarded = [c for c in dict.fromkeys(components) if not read_metadata(ws.component_path(c)).privacy.private]
    if unguarded:
        typer.echo(f"note: {', '.join(unguarded)} {'was' if len(unguarded) == 1 else 'were'} trained without "
                   f"differential privacy, so model {name} has no DP guarantee: `dp-tangent release` refuses it unless "
                   "--non-private, which labels it as such", err=True)


def _composed_already(ws, name: str, components: list[str], weights: list[float] | None,  # noqa: ANN001
                      method: str) -> bool:
    """Whether model ``name`` is exactly this composition of the components' current files (asked again, e.g. by a
    script that lost the first answer): then there is nothing to do. Any difference is refused as before."""
    from ..errors import DPTangentError
    from ..io import sha256_file

    if not ws.model_path(name).exists():
        return False
    try:
        record = ws.model_record(name)
        current = [sha256_file(ws.component_path(c)) for c in components]
    except (OSError, ValueError, DPTangentError):
        return False
    return (record.component_names == list(components) and record.method == method and record.weights == weights
            and [p.sha256 for p in record.components] == current)
