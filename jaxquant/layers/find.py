"""The one layer finder: which layers a model calls, found by tracing one forward pass."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax


def visit_layers(
    forward: Callable[[], Any],
    types: tuple[type, ...],
    visit: Callable[[nn.Module, tuple, Any], None],
) -> None:
    """Call ``visit(module, args, output)`` for every ``__call__`` of a module of ``types``
    during one abstract trace of ``forward()`` (shapes only, nothing is computed), in call
    order. ``forward`` runs the model, e.g. ``lambda: model.init(key, x, 0)``."""

    def interceptor(next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and isinstance(context.module, types):
            visit(context.module, args, y)
        return y

    with nn.intercept_methods(interceptor):
        jax.eval_shape(forward)
