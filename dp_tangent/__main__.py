"""``python -m dp_tangent`` is the ``dp-tangent`` command."""

from .cli import main

main()
