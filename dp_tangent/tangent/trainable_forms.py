"""The written forms of a ``trainable`` specification (see :mod:`~dp_tangent.tangent.selection`), without torch:
a recipe's ``trainable`` is checked against them before torch loads."""

from __future__ import annotations

import re

FORMS = "None/'all', 'blocks[-K:]', 'head', 'params:a,b' or a list of parameter-name prefixes"
#: A recipe's ``trainable`` string (a list of prefixes is written ``params:a,b`` there); ``blocks[-0:]``, which
#: Python would read as every block, is not one.
STRING_FORM = re.compile(r"^(all|head|blocks\[(\d+|-0*[1-9]\d*):\]|params:\s*[A-Za-z0-9_.]+(\s*,\s*[A-Za-z0-9_.]+)*)$")
