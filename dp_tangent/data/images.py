"""Images as model inputs: ImageNet normalisation, image folders, torchvision's CIFAR, single files.

Image folders and CIFAR are read lazily (:class:`ImageFiles`, :class:`CifarImages`): a record holds a
file path (or a row number of CIFAR's 32x32 uint8 array), and an image is decoded, resized and
normalised only when a batch reads it, so memory does not grow with the number of images at the
model's input size. Every file of a folder is decoded once when the folder is loaded, so that a
corrupt one is refused, by name, before anything is trained or any budget spent (a registered folder's
files only when new: the registration checks the others' digests).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from .records import LazyInputs, RecordSet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _unreadable_errors() -> tuple[type[Exception], ...]:
    """What PIL raises for a file that is not an image, is truncated or corrupt, or is absurdly large."""
    from PIL import Image

    # UnidentifiedImageError and "image file is truncated" are OSErrors
    return OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError


def _unreadable_image(path: str | Path, err: Exception) -> DataError:
    """The one-line error for an image file PIL cannot decode."""
    from PIL import UnidentifiedImageError

    if isinstance(err, UnidentifiedImageError):  # its message repeats the path or shows a file object
        detail = "empty, or not an image format PIL recognises"
    else:
        detail = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}".rstrip(": ")
    return DataError(f"{path}: cannot read the image ({detail}); replace or remove the file")


def normalise(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> (N, 3, size, size), ImageNet-normalised."""
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((images - mean) / std).contiguous()


def _decode(path: str | Path, grayscale: bool, decoder: int = 1, size: int | None = None) -> torch.Tensor:
    """One image file as (C, H, W) in [0, 1], read as ``decoder`` says for a model input of ``size`` pixels a side
    (None: no reduction); a file PIL cannot decode is a one-line error naming it."""
    from PIL import Image
    from torchvision.transforms.functional import to_tensor

    try:
        with Image.open(path) as opened:
            image = _as_viewed(opened, size) if decoder == 2 else opened
            if _sixteen_bits(path, image):
                return _sixteen_bit(image, grayscale)
            image = image.convert("L" if grayscale else "RGB")
            return to_tensor(_reduced(image, size) if decoder == 2 else image)
    except _unreadable_errors() as err:
        raise _unreadable_image(path, err) from None


def _as_viewed(image, size: int | None):  # noqa: ANN001, ANN202 -- PIL images
    """Decoder 2's pixels before conversion: a JPEG decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps
    both sides at least ``2 * size``, then turned as its EXIF orientation says."""
    from PIL import ImageOps

    if size is not None:
        image.draft(None, (2 * size, 2 * size))  # JPEG only; other formats ignore it
    ImageOps.exif_transpose(image, in_place=True)  # loads the pixels, turned or not
    return image


def _reduced(image, size: int | None):  # noqa: ANN001, ANN202 -- PIL images
    """An 8-bit image box-averaged by whole factors per side, each side kept at least ``2 * size`` (16-bit images,
    rare and small, are not reduced). The boxes tile a centred crop (fewer than a factor's pixels off each side):
    a last partial box would stretch the image by up to a reduced pixel."""
    if size is None:
        return image
    (w, h), (fx, fy) = image.size, (max(1, image.width // (2 * size)), max(1, image.height // (2 * size)))
    if (fx, fy) == (1, 1):
        return image
    left, top = (w % fx) // 2, (h % fy) // 2
    return image.reduce((fx, fy), (left, top, left + w - w % fx, top + h - h % fy))


def _sixteen_bits(path: str | Path, image) -> bool:  # noqa: ANN001 -- a PIL image
    """Whether the image holds 16-bit values (read over 65535: PIL's convert() clips them at 255, nearly all white);
    a 32-bit one whose values no fixed scaling fits is a one-line error."""
    if image.mode.startswith("I;16"):
        return True
    if image.mode == "I" and _within_16_bits(image):  # how PIL opens a 16-bit PGM (or, older, PNG)
        return True
    if image.mode == "I":
        raise DataError(f"{path}: a 32-bit integer image with values outside 0..65535, which no fixed scaling fits; "
                        "convert it to an 8- or 16-bit image")
    if image.mode == "F":  # 0..1 and 0..255 are both common: reading either as the other would be silently wrong
        raise DataError(f"{path}: a 32-bit float image, whose values have no fixed scale (0..1? 0..255?); convert it "
                        "to an 8- or 16-bit image")
    return False


def _readable(path: str | Path, decoder: int = 1, size: int | None = None) -> DataError | None:
    """None if the file decodes whole as an image a record may be (as ``decoder`` reads it, its pixels not converted
    to a tensor: a quarter of the memory and time), else the one-line error naming it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load() if decoder == 1 else _as_viewed(image, size)  # every pixel: a truncated file fails here
            _sixteen_bits(path, image)
    except DataError as err:
        return err
    except _unreadable_errors() as err:
        return _unreadable_image(path, err)
    return None


def _within_16_bits(image) -> bool:  # noqa: ANN001 -- a PIL image
    """Whether a 32-bit integer image's values all fit 16 bits (0..65535)."""
    low, high = image.getextrema()
    return 0 <= low and high <= 65535


def _sixteen_bit(image, grayscale: bool) -> torch.Tensor:  # noqa: ANN001 -- a PIL image
    """A 16-bit grayscale image as (C, H, W) in [0, 1]: its values over 65535, as 8-bit ones are over 255."""
    pixels = torch.from_numpy(np.asarray(image).astype(np.float32) / 65535.0)[None]
    return pixels if grayscale else pixels.expand(3, -1, -1).contiguous()


def load_image(path: Path, image_size: int, *, grayscale: bool, decoder: int = 1) -> torch.Tensor:
    """One image file as a (3, S, S) model input, read as ``decoder`` says
    (:data:`~dp_tangent.data.kinds.IMAGE_DECODERS`), resized and ImageNet-normalised."""
    return normalise(_decode(path, grayscale, decoder, image_size).unsqueeze(0), image_size)[0]


@dataclass(frozen=True)
class ImageFiles(LazyInputs):
    """Image files under ``root`` (paths relative to it), decoded and resized when read."""

    finite: ClassVar[bool] = True  # 8-bit pixels under a fixed normalisation
    root: str
    files: tuple[str, ...]
    image_size: int
    grayscale: bool = False
    device: str = "cpu"
    decoder: int = 1

    @property
    def row_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    def __len__(self) -> int:
        return len(self.files)

    def _decode(self, index: Sequence[int]) -> torch.Tensor:
        root = Path(self.root)
        return torch.stack([load_image(root / self.files[i], self.image_size, grayscale=self.grayscale,
                                       decoder=self.decoder) for i in index])

    def select(self, index: Sequence[int]) -> "ImageFiles":
        return dataclasses.replace(self, files=tuple(self.files[i] for i in index))


def check_images(paths: Sequence[Path], decoder: int = 1, size: int | None = None) -> None:
    """Decode every file once as ``decoder`` reads it for inputs of ``size`` (a few threads; nothing kept); files
    that fail are one one-line error naming how many and the first (all found in one pass, not one a pass)."""
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        failed = [err for err in pool.map(functools.partial(_readable, decoder=decoder, size=size), paths,
                                          chunksize=16) if err is not None]
    if len(failed) == 1:
        raise failed[0]
    if failed:
        raise DataError(f"{len(failed)} image files cannot be read; the first: {failed[0]}")


def image_folder_records(root: Path, image_size: int, *, classes: Sequence[str] | None = None,
                         verify: bool = True, decoded_before: Callable[[str], bool] | None = None,
                         hidden: bool = False, decoder: int = 1) -> RecordSet:
    """``root/CLASS/FILE`` images (torchvision's ``ImageFolder`` layout and extensions), read lazily;
    a record's id is its path under ``root``, its label the index of its folder in ``classes`` (a listed class
    may have no folder; a folder not listed is refused). Without ``classes`` (a data source registered before
    they were required), the sorted folder names. Every file is decoded once here (see the module doc)
    unless ``verify`` is false (a reload whose file digests are checked against files verified before), except
    the records whose ids ``decoded_before`` names (a registered source's, whose digests its registration checks).
    ``hidden``: images in hidden folders and hidden files are records too, as before 2026-12-04. ``decoder``: how
    the files become pixels (:data:`~dp_tangent.data.kinds.IMAGE_DECODERS`)."""
    from torchvision import datasets

    if not root.is_dir():
        raise DataError(f"{root}: image folder not found (data.image_folder.root)")
    if classes is not None:
        unlisted = sorted(e.name for e in os.scandir(root)  # hidden folders (.git, .ipynb_checkpoints) are not read
                          if e.is_dir() and e.name not in classes and not e.name.startswith("."))
        if unlisted:
            raise DataError(f"{root}: folder(s) {', '.join(unlisted[:3])} not in data.image_folder.classes; list "
                            "every class folder (in class order) or move the folder out")
    _refuse_links(root)
    if verify:  # a reload reads what was registered; its digests say whether those files are unchanged
        _refuse_unread_files(root)
    try:
        folder = _listed_folder(datasets, classes, hidden)(str(root))  # lists files and classes; decodes nothing
    except FileNotFoundError as err:  # no class folders, or no image files in them
        raise DataError(f"{root}: {str(err).rstrip('.')}; put images in {root}/CLASS/FILE") from None
    if not folder.samples:
        raise DataError(f"{root}: no image files in the class folders {', '.join(classes or [])}; put images in "
                        f"{root}/CLASS/FILE")
    ids = tuple(Path(p).relative_to(root).as_posix() for p, _ in folder.samples)
    if verify:
        check_images([Path(p) for (p, _), i in zip(folder.samples, ids) if decoded_before is None
                      or not decoded_before(i)], decoder, image_size)
    return RecordSet(ImageFiles(str(root), ids, image_size, decoder=decoder),
                     torch.tensor(folder.targets, dtype=torch.long), ids)


def _refuse_links(root: Path) -> None:
    """No symbolic link under ``root``: ImageFolder follows them, so one image could be read under several ids (a
    link to a folder above makes a loop), each a record of its own while the guarantee counts one."""
    for folder, dirs, files in os.walk(root):
        link = next((name for name in (*dirs, *files) if os.path.islink(os.path.join(folder, name))), None)
        if link is not None:
            raise DataError(f"{Path(folder, link)} is a symbolic link; an image folder holds its files themselves "
                            "(a linked image would be read under two ids, as two records)")


#: Files an image folder may hold that are no records: system litter, not images.
_LITTER = frozenset({"thumbs.db", "desktop.ini"})


def _refuse_unread_files(root: Path) -> None:
    """No file the folder reader would pass over in silence: an image directly in ``root`` (not in a class folder),
    or a file in a class folder with an extension it does not read (``.gif``, ``.heic``, ``.JPG.txt``). The data
    owner counts those as training records; skipped, their owner's deletion request would find nothing and the
    trained model would not be the data the owner believes. Hidden files (``.DS_Store``, ``._x.png``), files in
    hidden folders and system litter are left alone, and are no records (:func:`_listed_folder`)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    loose, unread = [], []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith(".") or name.lower() in _LITTER:
                continue
            readable = name.lower().endswith(IMG_EXTENSIONS)
            if os.path.samefile(folder, root):
                if readable:
                    loose.append(name)
            elif not readable:
                unread.append(Path(folder, name).relative_to(root).as_posix())
    if loose:
        raise DataError(f"{root}: {len(loose)} image(s) outside the class folders, e.g. {sorted(loose)[0]}; an image "
                        f"folder reads {root}/CLASS/FILE only: move them into their class folder or out of {root}")
    if unread:
        kinds = sorted({Path(u).suffix.lower() or "(no extension)" for u in unread})
        raise DataError(f"{root}: {len(unread)} file(s) in class folders are not images it reads "
                        f"({', '.join(kinds[:5])}; e.g. {sorted(unread)[0]}): convert them to "
                        f"{'/'.join(e.lstrip('.') for e in IMG_EXTENSIONS[:4])} or move them out")


def _listed_folder(datasets: ModuleType, classes: Sequence[str] | None, hidden: bool = False) -> type:
    """torchvision's ``ImageFolder``, its classes ``classes`` in that order where given (a class without a folder
    holds no image) instead of the folders present, and then without hidden files and files in hidden folders,
    which ImageFolder reads as images (a ``.thumbs/`` cache would hold a second copy of a record under another id,
    which its owner's deletion would not find; a macOS ``._x.png`` is no image at all), unless ``hidden`` (a data
    source registered before 2026-12-04). Without ``classes`` (one registered before they were required) it reads
    as it read then."""
    if classes is None:
        return datasets.ImageFolder

    from torchvision.datasets.folder import IMG_EXTENSIONS

    class Listed(datasets.ImageFolder):  # type: ignore[name-defined,misc]
        def __init__(self, root: str) -> None:
            def is_record(path: str) -> bool:  # no hidden file, nor a file in a hidden folder (.thumbs/, ._x.png)
                below = Path(path).relative_to(root).parts[1:]  # under its class folder, which classes lists
                return path.lower().endswith(IMG_EXTENSIONS) and (hidden or not any(p.startswith(".") for p in below))

            super().__init__(root, allow_empty=True, is_valid_file=is_record)

        def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
            return list(classes), {c: i for i, c in enumerate(classes)}

    return Listed


@functools.lru_cache(maxsize=2)
def cifar_arrays(name: str, root: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 pixels and labels of one CIFAR split, read once per process."""
    from torchvision import datasets

    try:
        dataset = getattr(datasets, name)(root, train=train, download=False)
    except RuntimeError as err:
        raise DataError(f"{name} not found in {root}: set data.torchvision.download: true "
                        f"(needs internet) or point root: at a copy ({str(err).splitlines()[0]})") from None
    return dataset.data, np.asarray(dataset.targets, dtype=np.int64)


@dataclass(frozen=True)
class CifarImages(LazyInputs):
    """Rows of a CIFAR split (kept as 32x32 uint8, about 3 KB an image), resized when read."""

    finite: ClassVar[bool] = True
    name: str
    root: str
    train: bool
    indices: tuple[int, ...]
    image_size: int
    device: str = "cpu"

    @property
    def row_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    def __len__(self) -> int:
        return len(self.indices)

    def _decode(self, index: Sequence[int]) -> torch.Tensor:
        pixels = cifar_arrays(self.name, self.root, self.train)[0]
        batch = torch.as_tensor(pixels[[self.indices[i] for i in index]]).permute(0, 3, 1, 2)
        return normalise(batch.float() / 255, self.image_size)

    def select(self, index: Sequence[int]) -> "CifarImages":
        return CifarImages(self.name, self.root, self.train, tuple(self.indices[i] for i in index), self.image_size,
                           self.device)


def torchvision_records(name: str, root: str, *, download: bool, image_size: int,
                        max_records: int | None) -> tuple[RecordSet, RecordSet]:
    """(train, test) of torchvision's ``name`` (CIFAR10/CIFAR100), read lazily; ids ``<name>-train-<i>``/``-test-<i>``."""
    from torchvision import datasets

    if download:
        for train in (True, False):
            try:
                getattr(datasets, name)(root, train=train, download=True)
            except (RuntimeError, OSError) as err:
                raise DataError(f"{name}: download to {root} failed ({str(err).splitlines()[0]})") from None
    splits = []
    for train in (True, False):
        _, labels = cifar_arrays(name, root, train)
        n = min(max_records or len(labels), len(labels)) if train else len(labels)
        prefix = f"{name.lower()}-{'train' if train else 'test'}"
        splits.append(RecordSet(CifarImages(name, root, train, tuple(range(n)), image_size),
                                torch.as_tensor(labels[:n]), tuple(f"{prefix}-{i}" for i in range(n))))
    return splits[0], splits[1]
