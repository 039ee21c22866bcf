"""The written forms of a ``trainable`` specification (see :mod:`~dp_tangent.tangent.selection`), without torch:
a recipe's ``trainable`` is checked against them before torch loads."""

from __future__ import annotations

import re

FORMS = "None/'all', 'blocks[-K:]', 'head', 'params:a,b' or a list of parameter-name prefixes"
#: A recipe's ``trainable`` string (a list of prefixes is written ``params:a,b`` there); ``blocks[-0:]``, which
#: Python would read as every block, is not one.
STRING_FORM = re.compile(r"(all|head|blocks\[(\d+|-0*[1-9]\d*):\]|params:\s*[A-Za-z0-9_.]+(\s*,\s*[A-Za-z0-9_.]+)*)",
                         re.ASCII)


def written_form(value: str) -> str:
    """``value`` without surrounding whitespace if it is one of the string forms, else a ``ValueError`` naming
    them (ASCII digits only: ``int()`` would read other scripts' digits too)."""
    stripped = value.strip()
    if re.fullmatch(r"blocks\[-0+:\]", stripped):  # Python's -0 is 0: every block, not the last none
        raise ValueError(f"{value!r}: -0 is 0, every block; write 'blocks[-K:]' with K >= 1 for the last K blocks, "
                         "or 'blocks[0:]' for every block")
    if not STRING_FORM.fullmatch(stripped):
        raise ValueError(f"{value!r} is not understood; use {FORMS}")
    return stripped
