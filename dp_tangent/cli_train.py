"""``dp-tangent train | evaluate | predict``: recipe-driven commands, registered on :data:`dp_tangent.cli.app`.

``train`` spends privacy budget: one DP component per shard (``NAME-shard-K`` on shard ``shard-K``
of the recipe's data source), each reserved in the ledger before any record is read, then composes
them (mean) into model ``NAME``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .cli import DEFAULT_WORKSPACE, WorkspaceOption, _workspace, app

if TYPE_CHECKING:
    from .recipes import Recipe
    from .tangent import TangentModel
    from .workspace import Workspace

RecipeArgument = Annotated[Path, typer.Argument(help="Recipe YAML file (see docs/recipes.md).")]
DataOption = Annotated[Optional[Path], typer.Option(
    "--data", help="Recipe whose data to use [default: the embedded digits recipe].")]


def _recipe(path: Optional[Path]) -> Recipe:
    from .recipes import default_recipe, load_recipe

    return default_recipe() if path is None else load_recipe(path)


def _check_unused(ws: Workspace, name: str, shards: int) -> None:
    """Refuse before spending anything if the model or a component name is taken."""
    from .workspace import WorkspaceError

    if name in ws.list_models():
        raise WorkspaceError(f"model {name!r} already exists in {ws.root}; choose another --name")
    for k in range(shards):
        component = f"{name}-shard-{k}"
        if ws.component_path(component).exists() or ws.ledger.events(component=component):
            raise WorkspaceError(f"component name {component!r} is already used in {ws.root}; choose another --name")


def _tangent(ws: Workspace, name: str) -> TangentModel:
    """The tangent model of a composed model or a component, its deltas loaded."""
    from .compose import tangent_for
    from .workspace import WorkspaceError

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


def _register_source(ws: Workspace, recipe: Recipe) -> None:
    """Declare the data source and its shards; digits (random split) can be re-read for retraining."""
    from . import sources
    from .recipes import DigitsData

    shards = [f"shard-{k}" for k in range(recipe.shards.count)]
    ws.ledger.set_data_source(recipe.data_source, unit="record", description=f"recipe data {recipe.data.kind}",
                              shards=shards)
    source = recipe.data.source
    if isinstance(source, DigitsData):
        sources.register(ws, recipe.data_source, sources.DigitsSource(
            image_size=source.image_size, shards=recipe.shards.count, test_fraction=source.test_fraction,
            seed=source.seed, max_records=source.max_records, by=recipe.shards.by))
    budget = recipe.budget
    current = next((b for b in ws.ledger.budgets() if (b.data_source, b.shard) == (recipe.data_source, None)), None)
    if budget and (current is None or (current.epsilon, current.delta) != (budget.epsilon, budget.delta)):
        ws.set_budget(recipe.data_source, None, budget.epsilon, budget.delta)


@app.command()
def train(
    recipe_path: RecipeArgument,
    shards: Annotated[Optional[int], typer.Option(help="Number of disjoint shards [default: the recipe's].")] = None,
    epsilon: Annotated[Optional[float], typer.Option(help="Target epsilon of every component.")] = None,
    delta: Annotated[Optional[float], typer.Option(help="Delta of every component.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Model name; components are NAME-shard-K "
                                                     "[default: the recipe file's stem].")] = None,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Train one DP component per shard of a recipe's data, and compose them (mean) into model NAME."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .evaluation import accuracy
    from .recipes import load_recipe
    from .tangent import linearize
    from .workspace import Workspace, check_name

    recipe = load_recipe(recipe_path).with_overrides(shards=shards, epsilon=epsilon, delta=delta)
    name = check_name(name or recipe_path.stem, "model")
    ws = Workspace.open(workspace) if (workspace / "workspace.json").exists() else None
    if ws is not None:
        _check_unused(ws, name, recipe.shards.count)
    test, parts = recipe.load_data()  # before creating anything: a data set that does not load leaves no trace
    ws = ws or Workspace.create(workspace)
    _register_source(ws, recipe)
    spec, console = recipe.backbone.spec(), Console()
    console.print(f"{recipe_path}: {spec.name} ({recipe.trainable}), {len(parts)} shards of "
                  f"{[len(p) for p in parts]} records, epsilon {recipe.privacy.epsilon:g} each; workspace {ws.root}")
    names = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for k, records in enumerate(parts):
            component = f"{name}-shard-{k}"
            task = progress.add_task(component, total=None)
            ws.train(spec, recipe.trainable, records, data_source=recipe.data_source, shard=f"shard-{k}",
                     name=component, privacy=recipe.privacy_spec(), config=recipe.train_config(),
                     progress=lambda step, total, task=task: progress.update(task, completed=step, total=total))
            names.append(component)
    ws.compose_model(name, names, method="mean")
    tangent = linearize(spec.build(), recipe.trainable) if test is not None else None
    features = tangent.features(test.inputs) if tangent is not None else None
    for component in names:
        loaded = ws.load_component(component)
        line = f"{component}: epsilon {loaded.metadata.epsilon:.3g}" if math.isfinite(loaded.metadata.epsilon) \
            else f"{component}: NON-PRIVATE (epsilon = inf)"
        if tangent is not None:
            tangent.load_deltas(loaded.deltas)
            line += f", test accuracy {accuracy(tangent, test, features=features):.1%}"
        typer.echo(line)
    guarantee = ws.ledger.model_guarantee(name)
    line = f"model {name}: mean of {len(names)} components, epsilon {guarantee.epsilon:.3g} per record"
    if tangent is not None:
        tangent.load_deltas(ws.load_model(name)[1])
        line += f", test accuracy {accuracy(tangent, test, features=features):.1%}"
    typer.echo(line)


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="A composed model or a component in the workspace.")],
    data: DataOption = None,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Test accuracy of a composed model or a component on a recipe's test split."""
    from .evaluation import accuracy
    from .recipes import RecipeError

    ws = _workspace(workspace)
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
    from .evaluation import predict as logits_of
    from .recipes import RecipeError, load_array

    ws = _workspace(workspace)
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

