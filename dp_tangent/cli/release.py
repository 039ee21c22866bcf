"""``dp-tangent release``: a composed model's release bundle, the only thing meant to leave a workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import DEFAULT_WORKSPACE, WorkspaceOption, app, open_workspace


@app.command()
def release(
    model: Annotated[str, typer.Argument(help="A composed model in the workspace.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="New directory for the bundle (outside the "
                                                                "workspace).")],
    non_private: Annotated[bool, typer.Option("--non-private", help="Release a model without a DP guarantee, "
                                                                    "labelled as such.")] = False,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Write MODEL's deltas, its base model's reference and its privacy statement to a new directory.

    Nothing else that depends on the data goes in: no record counts, manifests, sampling rates,
    steps, noise multipliers or seeds. The release is recorded in the audit log.
    """
    from ..components.release_bundle import STATEMENT_FILE
    from ..io import sha256_file
    from ..workspace.release import destination

    target = destination(output)  # where the release writes (``~`` expanded; ``.`` is replaced by the bundle)
    there = (target / STATEMENT_FILE).is_file()  # a release succeeds on a bundle only where it is this release's
    statement = open_workspace(workspace).release(model, output, allow_non_private=non_private)
    if there:
        typer.echo(f"{model} was released to {target} already ({statement.released_at}); nothing was changed: "
                   f"{statement.privacy.statement}")
    else:
        typer.echo(f"released {model} to {target}: {statement.privacy.statement}")
    digest = sha256_file(target / STATEMENT_FILE)  # logged too: the anchor a recipient checks the bundle by
    typer.echo(f"{STATEMENT_FILE} sha256 {digest}: give it to recipients apart from the bundle; they check it with "
               f"`dp-tangent predict {target} INPUTS.npy --expect {digest}` or load_release(folder, expected_sha256=)")
