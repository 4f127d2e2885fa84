"""Importance criteria: one interface, one file per criterion.

    from toolchain.importance import get_criterion
    scores = get_criterion("lrp", composite="epsilon_plus_flat").attribute(model, x, y, layers)
    # -> {layer.name: tensor(size,)}

Every module in this package that defines a ``Criterion`` subclass decorated with ``@register``
is discovered automatically, so adding a criterion is adding one file.
"""

from .base import Criterion, available, get_criterion, register, registered

__all__ = ["Criterion", "available", "get_criterion", "register", "registered"]
