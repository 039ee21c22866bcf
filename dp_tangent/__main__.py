"""``python -m dp_tangent`` is the ``dp-tangent`` command."""

from .console import main

main()
