"""The embedded default data set: scikit-learn's bundled handwritten digits.

1,797 real 8x8 images shipped inside the scikit-learn wheel, upsampled and normalised for an
ImageNet backbone; record ``i`` is ``digit-<i>``, its row in ``sklearn.datasets.load_digits()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .images import IMAGENET_MEAN, IMAGENET_STD
from .records import RecordSet


def load_digits(image_size: int = 32, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> RecordSet:
    """scikit-learn's digits as (N, 3, S, S) float32 images normalised with ``mean``/``std``."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    pixels = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(pixels, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = images.expand(-1, 3, -1, -1)
    images = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    ids = tuple(f"digit-{i}" for i in range(len(images)))
    return RecordSet(images.contiguous(), torch.tensor(bunch.target, dtype=torch.long), ids)
