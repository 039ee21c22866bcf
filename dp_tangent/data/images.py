"""Images as model inputs: ImageNet normalisation, image folders, torchvision's CIFAR, single files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..errors import DataError
from .records import RecordSet

if TYPE_CHECKING:
    from torchvision.datasets import ImageFolder

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


def image_folder_records(root: Path, image_size: int) -> RecordSet:
    """``root/CLASS/FILE`` images (torchvision's ``ImageFolder``); a record's id is its path under ``root``."""
    from torchvision import datasets, transforms

    if not root.is_dir():
        raise DataError(f"{root}: image folder not found (data.image_folder.root)")
    try:
        folder = datasets.ImageFolder(str(root), transform=transforms.ToTensor())
    except FileNotFoundError as err:  # no class folders, or no image files in them
        raise DataError(f"{root}: {str(err).rstrip('.')}; put images in {root}/CLASS/FILE") from None
    images = [_folder_image(folder, i, image_size) for i in range(len(folder))]
    ids = tuple(Path(p).relative_to(root).as_posix() for p, _ in folder.samples)
    return RecordSet(torch.stack(images), torch.tensor(folder.targets, dtype=torch.long), ids)


def _folder_image(folder: ImageFolder, index: int, image_size: int) -> torch.Tensor:
    """Image ``index`` of ``folder`` as a model input; a file PIL cannot decode is an error naming it."""
    try:
        pixels = folder[index][0]
    except _unreadable_errors() as err:
        raise _unreadable_image(folder.samples[index][0], err) from None
    return normalise(pixels.unsqueeze(0), image_size)[0]


def torchvision_records(name: str, root: str, *, download: bool, image_size: int,
                        max_records: int | None) -> tuple[RecordSet, RecordSet]:
    """(train, test) of torchvision's ``name`` (CIFAR10/CIFAR100); ids ``<name>-train-<i>``/``-test-<i>``."""
    from torchvision import datasets

    make = getattr(datasets, name)
    splits = []
    for train in (True, False):
        try:
            dataset = make(root, train=train, download=download)
        except RuntimeError as err:
            raise DataError(f"{name} not found in {root}: set data.torchvision.download: true "
                            f"(needs internet) or point root: at a copy ({str(err).splitlines()[0]})") from None
        n = min(max_records or len(dataset.data), len(dataset.data)) if train else len(dataset.data)
        pixels = torch.as_tensor(dataset.data[:n]).permute(0, 3, 1, 2)
        images = torch.cat([normalise(pixels[i:i + 256].float() / 255, image_size)
                            for i in range(0, n, 256)])
        prefix = f"{name.lower()}-{'train' if train else 'test'}"
        splits.append(RecordSet(images, torch.tensor(dataset.targets[:n], dtype=torch.long),
                                tuple(f"{prefix}-{i}" for i in range(n))))
    return splits[0], splits[1]


def load_image(path: Path, image_size: int, *, grayscale: bool) -> torch.Tensor:
    """One image file as a (3, S, S) model input, resized and ImageNet-normalised."""
    from PIL import Image
    from torchvision.transforms.functional import to_tensor

    try:
        with Image.open(path) as image:
            pixels = to_tensor(image.convert("L" if grayscale else "RGB"))
    except _unreadable_errors() as err:
        raise _unreadable_image(path, err) from None
    return normalise(pixels.unsqueeze(0), image_size)[0]
