"""Element-wise math of the kernels (device functions), the Triton twin of
csrc/include/gct_fused/{pointwise.h,gct_math.h}.

Each function works on any float dtype (the kernels call them in the accumulation dtype,
float32 or float64) and matches the CPU ops, including the value at kinks: relu'(0) = 0,
hardsigmoid'(+-3) = 0, sign(0) = 0. Constants are exact in float32 (0.5, 1, 2, 3, 6) or
built in the operand's dtype, so float64 math never sees a float32-rounded constant.
GCT's gate 1 + tanh(z) is written 2 / (1 + exp(-2z)), as in gct_math.h: no cancellation
where tanh(z) is near -1, and no libdevice tanh (which the interpreter does not have).
"""

import triton.language as tl

from .launch import device_function

# Option codes shared with the launchers (constexpr arguments of the kernels).
GCT_L2 = 0
GCT_L1 = 1
ACT_RELU = 0
ACT_SILU = 1
GATE_SIGMOID = 0
GATE_HARDSIGMOID = 1


@device_function
def sum_along(x, axis: tl.constexpr):
    """tl.sum for float tensors, written as the reduction tl.sum performs. The interpreter
    runs it through numpy directly (tl.sum is a jitted function there, and each call of
    one costs milliseconds); compiled, it is the same reduction."""
    return tl.reduce(x, axis, tl.standard._sum_combine)


@device_function
def sqrt_precise(v):
    """IEEE square root (tl.sqrt is the approximate one for float32)."""
    if v.dtype == tl.float32:
        return tl.sqrt_rn(v)
    else:
        return tl.sqrt(v)


@device_function
def div_precise(a, b):
    """IEEE division (`/` is the approximate one for float32); a and b share a float dtype
    and broadcast against each other."""
    if a.dtype == tl.float32:
        a, b = tl.broadcast(a, b)
        return tl.div_rn(a, b)
    else:
        return a / b


@device_function
def epsilon_in(eps_hi, eps_lo, ACC: tl.constexpr):
    """epsilon rebuilt in ACC from its float32 parts (see launch.split_epsilon). Written
    with additions, not .to(): the interpreter passes float arguments as Python floats."""
    return (eps_hi + tl.full([], 0.0, ACC)) + eps_lo


@device_function
def gct_gate(z):
    """g = 1 + tanh(z) = 2 / (1 + exp(-2z)) (gct_math.h's gct_gate); 0 where exp overflows."""
    d = 1.0 + tl.exp(-2.0 * z)
    return div_precise(tl.full([], 2.0, d.dtype), d)


@device_function
def gct_dz(grad, z, g):
    """grad * (1 - tanh(z)^2) = grad * g(z) * g(-z), given g = gct_gate(z) (gct_math.h's gct_dz)."""
    return grad * (g * gct_gate(-z))


@device_function
def sigmoid(v):
    return 1.0 / (1.0 + tl.exp(-v))


@device_function
def sign(v):
    """sign(v) with sign(0) = 0 (the subgradient torch uses for abs), in v's dtype."""
    return (v > 0).to(v.dtype) - (v < 0).to(v.dtype)


@device_function
def relu(v):
    # where, not maximum: keeps NaN as torch.relu does.
    return tl.where(v < 0, 0.0, v)


@device_function
def activation(u, ACT: tl.constexpr):
    if ACT == 0:
        return relu(u)
    else:
        return u * sigmoid(u)


@device_function
def activation_grad(u, ACT: tl.constexpr):
    """d act(u) / du."""
    if ACT == 0:
        return (u > 0).to(u.dtype)
    else:
        sg = sigmoid(u)
        return sg * (1.0 + u * (1.0 - sg))


@device_function
def gate(o, GATE: tl.constexpr):
    if GATE == 0:
        return sigmoid(o)
    else:
        # relu6(o + 3) / 6 as torch writes hardsigmoid
        return tl.where(o <= -3.0, 0.0, tl.where(o >= 3.0, 1.0, o / 6.0 + 0.5))


@device_function
def gate_grad(o, GATE: tl.constexpr):
    """d gate(o) / do."""
    if GATE == 0:
        sg = sigmoid(o)
        return sg * (1.0 - sg)
    else:
        return ((o > -3.0) & (o < 3.0)).to(o.dtype) / 6.0


@device_function
def activation_backward(grad, u, ACT: tl.constexpr):
    """grad * d act(u) / du as autograd computes it: relu's is a selection (threshold_backward:
    0 where u <= 0 even for an infinite or NaN grad, grad elsewhere, NaN u included), SiLU's a
    product."""
    if ACT == 0:
        return tl.where(u <= 0, 0.0, grad)
    else:
        return grad * activation_grad(u, ACT)


@device_function
def gate_backward(grad, o, GATE: tl.constexpr):
    """grad * d gate(o) / do as autograd computes it: hardsigmoid's is a selection
    (hardtanh_backward: grad / 6 where -3 < o < 3, else 0 even for an infinite or NaN grad;
    0 for a NaN o, as torch's vectorized kernel); the sigmoid's is a product."""
    if GATE == 0:
        return grad * gate_grad(o, GATE)
    else:
        return tl.where((o > -3.0) & (o < 3.0), grad * gate_grad(o, GATE), 0.0)


@device_function
def gct_embedding(s, alpha, eps, MODE: tl.constexpr):
    """e = alpha * sqrt(s + eps) (l2) or alpha * s (l1)."""
    if MODE == 0:
        return sqrt_precise(s + eps) * alpha
    else:
        return s * alpha


@device_function
def gct_norm_term(e, MODE: tl.constexpr):
    """The term averaged over channels for the normaliser: e^2 (l2) or |e| (l1)."""
    if MODE == 0:
        return e * e
    else:
        return tl.abs(e)


@device_function
def gct_norm_denom(term_sum, channels, eps, MODE: tl.constexpr):
    """sqrt(mean_c(e^2) + eps) (l2) or mean_c|e| + eps (l1), from the sum over channels."""
    mean = div_precise(term_sum, channels.to(term_sum.dtype))
    if MODE == 0:
        return sqrt_precise(mean + eps)
    else:
        return mean + eps
