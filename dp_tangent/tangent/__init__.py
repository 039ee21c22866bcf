"""The tangent model f_lin(x; delta) = f(x; theta0) + J(x)·delta and how a network becomes one.

* ``model``: :class:`TangentModel` and :func:`linearize`, the front door;
* ``twins``: tangent twins of parametrised layers (theta0 in buffers, deltas as parameters);
* ``ops``: op overrides for ops whose forward derivative PyTorch lacks;
* ``layouts``: how a network splits into stem, blocks and tail (registered per model type);
* ``selection``: which parameters are linearized (the ``trainable`` specification).
"""

from ..lazy import lazy_package

# imported on first use: ``trainable_forms`` is read when a recipe is checked, before torch loads
__all__ = ["TangentModel", "linearize"]

lazy_package(__name__, dict.fromkeys(__all__, ".model"))
