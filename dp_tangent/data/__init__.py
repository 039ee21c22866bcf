"""Data: records with stable ids, the data kinds a recipe can name, their loaders, and shards.

* ``records``: :class:`RecordSet` (inputs, labels, one unique id per record), whose inputs may be
  :class:`~dp_tangent.data.records.LazyInputs` (read a batch at a time);
* ``splits``: :func:`split_shards`, a test split and disjoint shards;
* ``digits``: the embedded default, scikit-learn's digits;
* ``images``, ``arrays``: lazy loaders for image folders and CIFAR, and for ``.npz``/``.npy`` files;
* ``tables``: CSV/Parquet tables, scaled only with public or declared statistics;
* ``text``: CSV/JSONL/Parquet texts tokenized to fixed-length token ids; ``sms_spam``: the SMS Spam
  Collection shipped in a PyPI package (the text demo's data);
* ``kinds``: the data kinds as validated descriptions, and :func:`~dp_tangent.data.kinds.load_data`;
* ``sources``: how a workspace re-reads a data source (retraining, evaluate, predict): one value
  type per data kind, registered with :func:`~dp_tangent.data.sources.register_source_kind`.
"""

from ..lazy import lazy_package

# imported on first use: ``digits`` and ``images`` load torch, which a command reading a workspace never needs
_LAZY = {"load_digits": ".digits", "IMAGENET_MEAN": ".images", "IMAGENET_STD": ".images", "RecordSet": ".records",
         "split_shards": ".splits"}

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "RecordSet", "load_digits", "split_shards"]

lazy_package(__name__, _LAZY)
