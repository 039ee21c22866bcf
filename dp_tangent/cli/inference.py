"""``dp-tangent evaluate | predict``: a composed model or a component on a recipe's test split or on files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .app import DEFAULT_WORKSPACE, WorkspaceOption, app, open_workspace

if TYPE_CHECKING:
    from ..recipes import Recipe
    from ..tangent import TangentModel
    from ..workspace import Workspace

DataOption = Annotated[Optional[Path], typer.Option(
    "--data", help="Recipe whose data to use (default: the embedded digits recipe).")]


def _recipe(path: Optional[Path]) -> Recipe:
    from ..recipes import default_recipe, load_recipe

    return default_recipe() if path is None else load_recipe(path)


def _tangent(ws: Workspace, name: str) -> TangentModel:
    """The tangent model of a composed model or a component, its deltas loaded."""
    from ..components.rebuild import tangent_for
    from ..workspace import WorkspaceError

    if name in ws.list_models():
        record, deltas = ws.load_model(name)
        base, digest, trainable = record.base, record.base_weights_sha256, record.trainable
    elif name in ws.list_components():
        component = ws.load_component(name)
        meta, deltas = component.metadata, component.deltas
        base, digest, trainable = meta.base, meta.base_weights_sha256, meta.trainable
    else:
        raise WorkspaceError(f"no model or component {name!r} in {ws.root} (models: "
                             f"{', '.join(ws.list_models()) or 'none'}; components: "
                             f"{', '.join(ws.list_components()) or 'none'})")
    tangent = tangent_for(base, digest, trainable)
    tangent.load_deltas(deltas)
    return tangent


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="A composed model or a component in the workspace.")],
    data: DataOption = None,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Test accuracy of a composed model or a component on a recipe's test split."""
    from ..errors import RecipeError
    from ..training.evaluation import accuracy

    ws = open_workspace(workspace)
    tangent = _tangent(ws, model)
    recipe = _recipe(data)
    test, _ = recipe.load_data()
    if test is None:
        raise RecipeError(f"{data}: the recipe's data has no test split (test_fraction is 0)")  # default has one
    typer.echo(f"{model}: test accuracy {accuracy(tangent, test):.2%} on {len(test)} records ({recipe.data.kind})")


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="A composed model or a component in the workspace.")],
    inputs: Annotated[list[Path], typer.Argument(help="Image files, or .npy arrays of model inputs "
                                                      "((C, H, W) or (N, C, H, W)).")],
    data: DataOption = None,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Class predictions for image files (preprocessed like the recipe's data) or .npy arrays."""
    from ..data.arrays import load_array
    from ..errors import RecipeError
    from ..training.evaluation import predict as logits_of

    ws = open_workspace(workspace)
    tangent = _tangent(ws, model)
    recipe = None
    for path in inputs:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such input file")
        if path.suffix == ".npy":
            batch = load_array(path)
        else:
            recipe = recipe or _recipe(data)
            batch = recipe.preprocess_image(path).unsqueeze(0)
        try:
            classes = logits_of(tangent, batch).argmax(dim=-1).tolist()
        except RuntimeError as err:
            raise RecipeError(f"{path}: inputs of shape {tuple(batch.shape[1:])} do not fit model {model!r} "
                              f"({str(err).splitlines()[0]})") from None
        typer.echo(f"{path}: {classes[0] if len(classes) == 1 else ' '.join(map(str, classes))}")
