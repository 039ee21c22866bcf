"""``dp-tangent pretrain``: theta0 for an MLP backbone, trained on a recipe's *public* table.

Public records cost no privacy: nothing is reserved, charged or logged, and no workspace is
touched. The checkpoint is written atomically to ``--out`` (default: the recipe's
``backbone.checkpoint``), recording the public table's sha256; training from the recipe then loads
it as theta0 (identified in every component by its weights' sha256) once the table it names as
``public_path`` is that table and holds no record the workspace holds as private or deleted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app


@app.command()
def pretrain(
    recipe_path: Annotated[Path, typer.Argument(help="Recipe with an mlp backbone and a table with public_path.")],
    out: Annotated[Optional[Path], typer.Option(help="Checkpoint to write (default: the recipe's "
                                                     "backbone.checkpoint).")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the public table.")] = 100,
    lr: Annotated[float, typer.Option(min=0.0, help="Adam learning rate.")] = 1e-2,
    seed: Annotated[int, typer.Option(help="Seed of the batch order.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing checkpoint.")] = False,
) -> None:
    """Pretrain an MLP backbone (non-privately) on the recipe's public table and write its checkpoint."""
    from dataclasses import replace

    from ..data.kinds import TableData
    from ..errors import RecipeError
    from ..recipes import load_recipe

    recipe = load_recipe(recipe_path)
    if recipe.backbone.family != "mlp":
        raise RecipeError(f"{recipe_path}: pretrain trains mlp backbones; this recipe's is {recipe.backbone.family}")
    table = recipe.data.source
    if not isinstance(table, TableData) or table.public_path is None:
        raise RecipeError(f"{recipe_path}: pretrain needs data: table: with public_path: (a table of public records)")
    target = out or (Path(recipe.backbone.checkpoint) if recipe.backbone.checkpoint else None)
    if target is None:
        raise RecipeError(f"{recipe_path}: give --out PATH, or backbone.checkpoint: PATH in the recipe")
    if target.suffix != ".safetensors":  # what it writes, and how training reads it (by the name)
        raise RecipeError(f"{target}: pretrain writes a safetensors checkpoint; give a path ending in .safetensors")
    if target.exists() and not force:
        raise RecipeError(f"{target} exists; pass --force to overwrite it (components trained on it would no longer "
                          "rebuild their theta0)")
    import torch  # after the recipe and options were checked: a mistake in them is reported at once

    from ..backbones.mlp_family import pretrain_mlp, save_mlp
    from ..backbones.provenance import PretrainedOn

    on = PretrainedOn.of(Path(table.public_path))  # before reading it: train refuses the checkpoint if it changed
    public = table.public_records()
    spec = replace(recipe.backbone.spec(), checkpoint=None)
    model = pretrain_mlp(spec, public.inputs, public.targets, epochs=epochs, lr=lr, seed=seed)
    digest = save_mlp(model, target, on.metadata())
    with torch.no_grad():
        accuracy = (model(public.inputs).argmax(-1) == public.targets).float().mean().item()
    typer.echo(f"{target}: MLP pretrained on {len(public)} public records ({table.public_path}), accuracy on them "
               f"{accuracy:.1%}; sha256 {digest}")
    if recipe.backbone.checkpoint is None or Path(recipe.backbone.checkpoint) != target.absolute():
        typer.echo(f"set backbone.checkpoint: {target} in the recipe to train on it")
