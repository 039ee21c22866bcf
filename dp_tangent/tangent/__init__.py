"""The tangent model f_lin(x; delta) = f(x; theta0) + J(x)·delta and how a network becomes one.

* ``model``: :class:`TangentModel` and :func:`linearize`, the front door;
* ``twins``: tangent twins of parametrised layers (theta0 in buffers, deltas as parameters);
* ``ops``: op overrides for ops whose forward derivative PyTorch lacks;
* ``layouts``: how a network splits into stem, blocks and tail (registered per model type);
* ``selection``: which parameters are linearized (the ``trainable`` specification).
"""

from .model import TangentModel, linearize

__all__ = ["TangentModel", "linearize"]
