"""Fake (meta) implementations and autograd formulas for one family of ops.

A family is the six ops gct_forward, gct_backward, se_forward, se_backward,
se_residual_forward and se_residual_backward under torch.ops.gct_fused, with a name
prefix: "" for the C++ ops of gct_fused._C (CPU and CUDA kernels), "triton_" for the
Triton ops. Every family has the same schemas, so one registration serves all:
`register_family(prefix)`. The C++ family takes only the fake implementations from here:
its autograd is in csrc/autograd.cpp (the same formulas), so that a forward call does not
go through Python.

The forward ops return (output, statistics); statistics are per-(n, c), float32
(float64 for float64 input), and are all the backward needs besides x. Each backward op
is itself a custom op, so torch.compile sees the backward as one opaque kernel too.
"""

from __future__ import annotations

import functools

import torch

# What a second derivative through a fused backward raises (the same text as
# kNoDoubleBackward in csrc/autograd.cpp).
NO_DOUBLE_BACKWARD = (
    "gct_fused: the fused backward ops are not differentiable (no double backward, e.g. "
    "for a gradient penalty or a Hessian-vector product); call the op with "
    'backend="reference" where a second derivative is needed')


class _NotDifferentiableAgain(torch.autograd.Function):
    """The identity on the gradients a fused backward returned, whose own backward raises.
    Its tensor inputs are what that backward read (dy, x, parameters), so any later
    derivative towards them reaches this node instead of silently getting zero. (The C++
    family's twin is first_order_only in csrc/autograd.cpp.)"""

    @staticmethod
    def forward(ctx, grads, *inputs):
        return tuple(g.detach() for g in grads)  # aliases: dy itself may be among them

    @staticmethod
    def backward(ctx, *unused):
        raise RuntimeError(NO_DOUBLE_BACKWARD)


def _first_order_only(backward):
    """Runs an autograd formula with grad mode off (the backward ops have no autograd:
    recorded, they would only yield second derivatives that are silently zero) and, under
    create_graph=True, routes its gradients through _NotDifferentiableAgain."""

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        with torch.no_grad():
            out = backward(ctx, *grads)
        if not torch.is_grad_enabled():
            return out
        inputs = [t for t in (*grads, *ctx.saved_tensors) if t is not None and t.requires_grad]
        if not inputs:
            return out
        out = list(out)
        where = [i for i, g in enumerate(out) if isinstance(g, torch.Tensor)]
        for i, g in zip(where, _NotDifferentiableAgain.apply([out[i] for i in where], *inputs)):
            out[i] = g
        return tuple(out)

    return wrapper


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _stats_like(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], x.shape[1]), dtype=_acc_dtype(x.dtype))


def _grad_like(p: torch.Tensor) -> torch.Tensor:
    # Parameter gradients come back contiguous, in the parameter's shape and dtype.
    return p.new_empty(p.shape)


def _bias_grad_like(bias, weight: torch.Tensor, size: int) -> torch.Tensor:
    return weight.new_empty((size,)) if bias is None else _grad_like(bias)


def _same_device(fn: str, x: torch.Tensor, **tensors) -> None:
    """Every tensor argument on x's device. The fake implementations below also serve the Meta
    dispatch key, which the dispatcher picks whenever any argument is on "meta": without this
    check a call mixing meta and real tensors would return uninitialized real tensors instead of
    an error."""
    for name, t in tensors.items():
        if t is not None and t.device != x.device:
            raise ValueError(f"{fn}: {name} is on {t.device} but x is on {x.device}")


def register_family(prefix: str, autograd: bool = True) -> None:
    """Registers fake implementations, and autograd unless `autograd` is False, for the ops
    named `prefix + name`. The C++ family ("") has its autograd in C++ (csrc/autograd.cpp,
    the same formulas as below), which costs no Python call per forward."""
    lib = "gct_fused::" + prefix

    def op(name):
        return getattr(torch.ops.gct_fused, prefix + name)

    # ---- fake implementations: shapes, dtypes and strides of the real kernels -------
    @torch.library.register_fake(lib + "gct_forward")
    def _gct_forward_fake(x, alpha, gamma, beta, epsilon, mode, after_relu):
        _same_device("gct", x, alpha=alpha, gamma=gamma, beta=beta)
        return torch.empty_like(x), _stats_like(x)

    @torch.library.register_fake(lib + "gct_backward")
    def _gct_backward_fake(dy, x, alpha, gamma, beta, stats, epsilon, mode, after_relu):
        _same_device("gct", x, dy=dy, alpha=alpha, gamma=gamma, beta=beta, stats=stats)
        return torch.empty_like(x), _grad_like(alpha), _grad_like(gamma), _grad_like(beta)

    @torch.library.register_fake(lib + "se_forward")
    def _se_forward_fake(x, w1, b1, w2, b2, activation, gate):
        _same_device("squeeze_excite", x, w1=w1, b1=b1, w2=w2, b2=b2)
        return torch.empty_like(x), _stats_like(x)

    @torch.library.register_fake(lib + "se_backward")
    def _se_backward_fake(dy, x, w1, b1, w2, b2, pooled, activation, gate):
        _same_device("squeeze_excite", x, dy=dy, w1=w1, b1=b1, w2=w2, b2=b2, pooled=pooled)
        return (torch.empty_like(x), _grad_like(w1), _bias_grad_like(b1, w1, w1.shape[0]),
                _grad_like(w2), _bias_grad_like(b2, w2, w2.shape[0]))

    @torch.library.register_fake(lib + "se_residual_forward")
    def _se_residual_forward_fake(x, identity, w1, b1, w2, b2, activation, gate, activation_after):
        _same_device("se_residual", x, identity=identity, w1=w1, b1=b1, w2=w2, b2=b2)
        return torch.empty_like(x), _stats_like(x)

    @torch.library.register_fake(lib + "se_residual_backward")
    def _se_residual_backward_fake(dy, x, y, w1, b1, w2, b2, pooled, activation, gate):
        _same_device("se_residual", x, dy=dy, y=y, w1=w1, b1=b1, w2=w2, b2=b2, pooled=pooled)
        return (torch.empty_like(x), torch.empty_like(x), _grad_like(w1),
                _bias_grad_like(b1, w1, w1.shape[0]), _grad_like(w2),
                _bias_grad_like(b2, w2, w2.shape[0]))

    if autograd:
        _register_autograd(lib, op)


def _register_autograd(lib: str, op) -> None:
    # ---- autograd --------------------------------------------------------------------
    def gct_setup(ctx, inputs, output):
        x, alpha, gamma, beta, epsilon, mode, after_relu = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(x, alpha, gamma, beta, output[1])
        ctx.options = (epsilon, mode, after_relu)

    @_first_order_only
    def gct_backward(ctx, dy, _dstats):
        x, alpha, gamma, beta, stats = ctx.saved_tensors
        dx, dalpha, dgamma, dbeta = op("gct_backward")(dy, x, alpha, gamma, beta, stats, *ctx.options)
        return dx, dalpha, dgamma, dbeta, None, None, None

    torch.library.register_autograd(lib + "gct_forward", gct_backward, setup_context=gct_setup)

    def se_setup(ctx, inputs, output):
        x, w1, b1, w2, b2, activation, gate = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(x, w1, b1, w2, b2, output[1])
        ctx.options = (activation, gate)

    @_first_order_only
    def se_backward(ctx, dy, _dpooled):
        x, w1, b1, w2, b2, pooled = ctx.saved_tensors
        dx, dw1, db1, dw2, db2 = op("se_backward")(dy, x, w1, b1, w2, b2, pooled, *ctx.options)
        return (dx, dw1, None if b1 is None else db1, dw2, None if b2 is None else db2, None, None)

    torch.library.register_autograd(lib + "se_forward", se_backward, setup_context=se_setup)

    def se_residual_setup(ctx, inputs, output):
        x, identity, w1, b1, w2, b2, activation, gate, activation_after = inputs
        y, pooled = output
        ctx.mark_non_differentiable(pooled)
        # The output is kept only to recover relu's mask (y > 0); it is alive anyway as
        # the input of the next layer, so this costs no memory.
        ctx.save_for_backward(x, y if activation_after == "relu" else None, w1, b1, w2, b2, pooled)
        ctx.options = (activation, gate)
        ctx.activation_after = activation_after

    @_first_order_only
    def se_residual_backward(ctx, dy, _dpooled):
        x, y, w1, b1, w2, b2, pooled = ctx.saved_tensors
        if ctx.activation_after == "relu":
            dx, didentity, dw1, db1, dw2, db2 = op("se_residual_backward")(
                dy, x, y, w1, b1, w2, b2, pooled, *ctx.options)
        else:  # y = se(x) + identity: identity's gradient is dy itself
            dx, dw1, db1, dw2, db2 = op("se_backward")(dy, x, w1, b1, w2, b2, pooled, *ctx.options)
            didentity = dy
        return (dx, didentity, dw1, None if b1 is None else db1, dw2, None if b2 is None else db2,
                None, None, None)

    torch.library.register_autograd(lib + "se_residual_forward", se_residual_backward,
                                    setup_context=se_residual_setup)
