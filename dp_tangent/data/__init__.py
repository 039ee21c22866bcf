"""Data: records with stable ids, the data kinds a recipe can name, their loaders, and shards.

* ``records``: :class:`RecordSet` (inputs, labels, one unique id per record);
* ``splits``: :func:`split_shards`, a test split and disjoint shards;
* ``digits``: the embedded default, scikit-learn's digits;
* ``images``, ``arrays``: loaders for image folders and CIFAR, and for ``.npz``/``.npy`` files;
* ``kinds``: the data kinds as validated descriptions, and :func:`~dp_tangent.data.kinds.load_data`;
* ``sources``: how a workspace re-reads a data source for retraining.
"""

from .digits import load_digits
from .images import IMAGENET_MEAN, IMAGENET_STD
from .records import RecordSet
from .splits import split_shards

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "RecordSet", "load_digits", "split_shards"]
