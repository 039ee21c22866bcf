"""``dp-tangent evaluate | predict``: a composed model or a component on its data's test split or on files.

By default both use the model's own data source, as the workspace recorded it when the model was
trained from a recipe (its path, preprocessing and test split; checked unchanged since). ``--data
RECIPE`` must describe that same source: a recipe naming another data source, or other data under
the same name, is refused in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .app import DEFAULT_WORKSPACE, WorkspaceOption, app, busy, open_workspace

if TYPE_CHECKING:
    import torch

    from ..backbones.families import BackboneFamily
    from ..data.records import RecordSet
    from ..data.sources import ReloadableSource
    from ..tangent import TangentModel
    from ..workspace import Workspace

DataOption = Annotated[Optional[Path], typer.Option(
    "--data", help="Recipe describing the model's data (default: the data source the model was trained on, "
                   "as the workspace recorded it).")]


def _tangent(ws: Workspace, name: str) -> tuple[TangentModel, dict[str, list[str]], BackboneFamily]:
    """The tangent model of a composed model or a component, its deltas loaded, its components'
    record commitments by data source, and its backbone's family (what one input is)."""
    from ..backbones import BackboneSpec, family
    from ..components.rebuild import tangent_for
    from ..workspace import WorkspaceError

    if name in ws.list_models():
        record, deltas = ws.load_model(name)
        base, digest, trainable = record.base, record.base_weights_sha256, record.trainable
        parts = record.component_names
    elif name in ws.list_components():
        component = ws.load_component(name)
        meta, deltas = component.metadata, component.deltas
        base, digest, trainable = meta.base, meta.base_weights_sha256, meta.trainable
        parts = [name]
    else:
        raise WorkspaceError(f"no model or component {name!r} in {ws.root} (models: "
                             f"{', '.join(ws.list_models()) or 'none'}; components: "
                             f"{', '.join(ws.list_components()) or 'none'})")
    trained_on: dict[str, list[str]] = {}
    for part in parts:
        meta = ws.load_component(part).metadata
        trained_on.setdefault(meta.data_source, []).extend(meta.manifest.commitments)
    tangent = tangent_for(base, digest, trainable)
    tangent.load_deltas(deltas)
    return tangent, trained_on, family(BackboneSpec.from_dict(base).family)


def _source(ws: Workspace, model: str, sources: list[str], data: Optional[Path]) -> tuple[str, ReloadableSource]:
    """(data source name, how to read it): the model's own, or ``--data``'s if it describes the same."""
    from ..data.sources import source_for
    from ..recipes import load_recipe
    from ..workspace import WorkspaceError
    from ..workspace.data_sources import read_as_registered, source_of

    if data is None:
        if len(sources) != 1:
            raise WorkspaceError(f"{model!r} was trained on {len(sources)} data sources ({', '.join(sorted(sources))}): "
                                 "name one with --data RECIPE")
        registered = source_of(ws, sources[0])
        if registered is None:
            raise WorkspaceError(f"the workspace records no loader for data source {sources[0]!r} of {model!r} (it was "
                                 "not trained from a recipe here): pass --data RECIPE describing that data")
        return sources[0], registered
    recipe = load_recipe(data)
    if recipe.data_source not in sources:
        raise WorkspaceError(f"--data {data}: its data source {recipe.data_source!r} is not the one {model!r} was "
                             f"trained on ({', '.join(sorted(sources))}); omit --data to use the model's own")
    given = source_for(read_as_registered(ws, recipe.data_source, recipe.data), recipe.shards)
    registered = source_of(ws, recipe.data_source)
    mine = registered.recipe_data() if registered is not None else None
    if mine is not None and mine != given.recipe_data():
        raise WorkspaceError(f"--data {data}: its data section differs from the data {recipe.data_source!r} was "
                             f"registered with when {model!r} was trained; omit --data to use that data")
    return recipe.data_source, given


def _test_records(ws: Workspace, name: str, source: ReloadableSource, trained_on: list[str]) -> RecordSet | None:
    """The source's test split (as registered, checked unchanged; or as ``--data`` gives it), without
    any record the model was trained on."""
    from ..components.manifest import commit
    from ..workspace.data_sources import source_of, test_records

    test = test_records(ws, name)[1] if source_of(ws, name) is not None else source.test_split()
    if test is None:
        return None
    key, seen = ws.manifest_key(), set(trained_on)
    return test.subset([i for i, r in enumerate(test.record_ids) if commit(r, key) not in seen])


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="A composed model or a component in the workspace.")],
    data: DataOption = None,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Test accuracy of a composed model or a component on the test split of the data it was trained on."""
    from ..errors import RecipeError
    from ..training.evaluation import accuracy, majority_share
    from ..training.features import precompute_features

    ws = open_workspace(workspace)
    tangent, trained_on, _ = _tangent(ws, model)
    name, source = _source(ws, model, list(trained_on), data)
    test = _test_records(ws, name, source, trained_on[name])
    if test is None:
        raise RecipeError(f"data source {name!r} has no test split (test_fraction is 0)")
    if len(test) == 0:
        raise RecipeError(f"data source {name!r} has no test record left to measure on (its test split is empty: "
                          "deletion requests removed its records, the model was trained on them, or it held none)")
    with busy(f"measuring {model} on {len(test)} test records…"):
        features = precompute_features(tangent, test.inputs)  # a batch at a time (lazy images are never all held)
        score = accuracy(tangent, test, features=features)
    typer.echo(f"{model}: test accuracy {score:.2%} on {len(test)} records "
               f"({source.loader}; always the most common label would score {majority_share(test):.2%})")


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="A composed model or a component in the workspace, or the folder of "
                                              "a release bundle (no workspace needed; .npy inputs).")],
    inputs: Annotated[list[Path], typer.Argument(help="Files preprocessed like the model's data (images; CSV or "
                                                      "Parquet tables with its feature columns), or .npy arrays of "
                                                      "model inputs; a folder stands for every file under it.")],
    data: DataOption = None,
    expect: Annotated[Optional[str], typer.Option(
        "--expect", help="A release bundle's release.json sha256, as `dp-tangent release` printed it: the bundle must "
                         "be that release.")] = None,
    names: Annotated[bool, typer.Option(
        "--names", help="Print each class's name, as the data section's `classes` lists them, instead of its "
                        "index.")] = False,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Class predictions for files (or folders of them), preprocessed like the model's own data, or for .npy arrays."""
    from ..data.arrays import load_array
    from ..errors import RecipeError
    from ..training.evaluation import predict as logits_of
    from ..workspace.data_sources import input_shape

    if data is not None and all(path.suffix == ".npy" for path in inputs):
        raise RecipeError("--data preprocesses files like a data section; .npy arrays are model inputs already, "
                          "given as they are")
    if (Path(model) / "release.json").exists() or expect is not None or "/" in model:
        if "/" not in model:
            _check_not_a_workspace_model(model, workspace)
        if names:
            raise RecipeError(f"{model}: a release bundle carries no class names (they stay in the workspace's data "
                              "section); omit --names for class indices")
        _predict_released(Path(model), inputs, data, expect)
        return
    ws = open_workspace(workspace)
    tangent, trained_on, kind = _tangent(ws, model)
    source = _source(ws, model, list(trained_on), data)[1] if names else None
    labels = _class_names(source, model) if source is not None else None
    shape = input_shape(ws, trained_on)

    def read(path: Path) -> tuple[torch.Tensor, list[str]]:
        nonlocal source
        if path.suffix == ".npy":
            batch = load_array(path, kind.input_rank, kind.token_ids, shape)
            _check_shape(path, batch, shape, f"model {model!r}", "give arrays of that shape, or the files themselves "
                         "(its data source reads them)")
            return batch, [str(path)]
        source = source or _source(ws, model, list(trained_on), data)[1]
        batch, rows = source.inputs_from_file(path)
        return batch, rows if len(rows) > 1 else [str(path)]

    def classes_of(batch: torch.Tensor, path: Path) -> list[int | str]:
        try:
            classes = logits_of(tangent, batch).argmax(dim=-1).tolist()
        except (RuntimeError, IndexError) as err:  # IndexError: a token id outside the vocabulary
            raise RecipeError(f"{path}: inputs of shape {tuple(batch.shape[1:])} do not fit model {model!r} "
                              f"({str(err).splitlines()[0]})") from None
        # an output past the listed classes (a head wider than the labels trained) is printed as its index
        return classes if labels is None else [labels[c] if c < len(labels) else c for c in classes]

    _predict_in_batches(_input_files(inputs), read, classes_of)


def _class_names(source: ReloadableSource, model: str) -> tuple[str, ...]:
    """The names of ``source``'s classes, by index, for ``predict --names``; refused where it lists none."""
    from ..errors import RecipeError

    listed = source.class_names()
    if listed is None:
        raise RecipeError(f"model {model!r}: its data source ({source.describe()}) names no classes (its labels are "
                          "the class indices); omit --names")
    return listed


def _check_shape(path: Path, batch: torch.Tensor, shape: tuple[int, ...] | None, model: str, advice: str) -> None:
    """A batch of .npy inputs is of the one input ``shape`` the model's data prepares, where that is known: an image
    network's global pooling takes any size, and would predict without a word."""
    from ..errors import RecipeError

    if shape is not None and tuple(batch.shape[1:]) != shape:
        raise RecipeError(f"{path}: inputs of shape {tuple(batch.shape[1:])}, but {model} takes {shape} (as its data "
                          f"source prepares them); {advice}")


PREDICT_BATCH = 64  # single-input files (images) predicted together: one forward for many files


def _predict_in_batches(files: list[Path], read: Callable[[Path], tuple[torch.Tensor, list[str]]],
                        classes_of: Callable[[torch.Tensor, Path], list[int | str]]) -> None:
    """Print each file's classes in order: files of one input each (an image) gathered into batches of up to
    :data:`PREDICT_BATCH` of one shape (a forward per file cost about 12x a batched one), a file of many rows
    (a table, a .npy batch) on its own."""
    import torch

    from ..errors import DPTangentError

    held: list[tuple[torch.Tensor, list[str], Path]] = []

    def flush() -> None:
        if not held:
            return
        try:
            classes = classes_of(torch.cat([batch for batch, _, _ in held]), held[0][2])
        except DPTangentError:
            if len(held) == 1:
                raise
            for batch, rows, path in held:  # one at a time: the files before the one at fault are printed, and the
                _print_classes(rows, classes_of(batch, path))  # error names the one that does not fit
            held.clear()
            return
        _print_classes([row for _, rows, _ in held for row in rows], classes)
        held.clear()

    for path in files:
        try:
            batch, rows = read(path)
        except Exception:
            flush()  # what was read before the file that cannot be is printed first, as one at a time would
            raise
        if len(batch) != 1 or len(rows) != 1:
            flush()
            _print_classes(rows, classes_of(batch, path))
            continue
        if held and (batch.shape[1:] != held[0][0].shape[1:] or batch.dtype != held[0][0].dtype):
            flush()
        held.append((batch, rows, path))
        if len(held) == PREDICT_BATCH:
            flush()
    flush()


def _input_files(inputs: list[Path]) -> list[Path]:
    """The files given, a folder standing for the files under it (sorted, hidden ones left out); each checked."""
    out: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise FileNotFoundError(f"{path}: a folder with no input file in it")
            out += found
        else:
            _input_file(path)
            out.append(path)
    return out


def _print_classes(rows: list[str], classes: list[int | str]) -> None:
    if len(rows) == 1:
        typer.echo(f"{rows[0]}: {classes[0] if len(classes) == 1 else ' '.join(map(str, classes))}")
    else:
        for row, label in zip(rows, classes):
            typer.echo(f"{row}: {label}")


def _check_not_a_workspace_model(name: str, workspace: Path) -> None:
    """A bundle folder in the working directory named like a model of the workspace is ambiguous: refused."""
    from ..errors import RecipeError
    from ..workspace import Workspace

    try:
        ws = Workspace.open(workspace, finish=False)
    except Exception:  # noqa: BLE001 -- no readable workspace there: the folder is what was meant
        return
    if name in ws.list_models() or name in ws.list_components():
        raise RecipeError(f"{name!r} is both a release bundle folder here and a model of {ws.root}: write ./{name} "
                          "for the bundle, or run elsewhere for the model")


def _predict_released(bundle: Path, inputs: list[Path], data: Optional[Path], expect: Optional[str]) -> None:
    """Class predictions of a release bundle's model for .npy arrays of model inputs: a bundle carries no data
    preprocessing, and no workspace is read (``expect``: release.json's sha256)."""
    from ..backbones import BackboneSpec, family
    from ..components.release_bundle import load_release
    from ..data.arrays import load_array
    from ..errors import RecipeError

    other = next((p for p in _input_files(inputs) if p.suffix != ".npy"), None)
    if data is not None or other is not None:
        raise RecipeError(f"{other or data}: a release bundle carries no data preprocessing (that stays in the "
                          "workspace); give .npy arrays of model inputs")
    released = load_release(bundle, expect)
    kind = family(BackboneSpec.from_dict(released.statement.base.spec).family)

    def classes_of(batch: torch.Tensor, path: Path) -> list[int]:
        try:
            return released.predict(batch).argmax(dim=-1).tolist()
        except (RuntimeError, IndexError) as err:  # IndexError: a token id outside the vocabulary
            raise RecipeError(f"{path}: inputs of shape {tuple(batch.shape[1:])} do not fit the released model "
                              f"({str(err).splitlines()[0]})") from None

    shape = released.statement.base.input_shape

    def read(path: Path) -> tuple[torch.Tensor, list[str]]:
        batch = load_array(path, kind.input_rank, kind.token_ids, None if shape is None else tuple(shape))
        _check_shape(path, batch, None if shape is None else tuple(shape), "the released model",
                     "give arrays of that shape")
        return batch, [str(path)]

    _predict_in_batches(_input_files(inputs), read, classes_of)
    if expect is None:  # the files match release.json, but release.json itself is whatever the folder holds
        typer.echo(f"note: {bundle} is unverified: its files match its release.json, but nothing binds that to the "
                   "release; give --expect with the sha256 the sender printed", err=True)


def _input_file(path: Path) -> None:
    """An input given is a file (anything else is missing)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such input file")
