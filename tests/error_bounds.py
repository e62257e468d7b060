"""First-order rounding-error scales of GCT and SE, forward and backward, for tolerances that
follow the conditioning of each output element.

A fixed relative tolerance fails wherever a result is the small difference of large terms:
a parameter gradient summed over a batch whose terms cancel, GCT's de = dz*gamma*r - Q*r^3*e/C
for a single channel (where the two terms cancel exactly in exact arithmetic), the derivative
s * (1 - s) of a saturated sigmoid. There every implementation computing in float32 (eager
PyTorch included) is off by about eps * (the size of the terms), not eps * (the result).

Each function below evaluates, in float64 next to the reference, the classic bound for every
output element: the sum of the magnitudes of everything that was rounded on the way to it,
propagated to first order through the formulas of the kernels (gct_math.h / pointwise.h and
their Triton twins). Multiplied by the unit roundoff of the accumulation dtype and a modest
constant (ERROR_FACTOR), it is the part of the tolerance that scales with the conditioning; an
indexing, layout or formula bug gives errors of the size of the result itself, far above it
wherever the result is not itself noise.

Names of the returned dicts: "y" (the forward output), then the inputs whose gradient is
checked: "x", "identity", "alpha", "gamma", "beta", "w1", "b1", "w2", "b2".
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

# Multiplies the first-order bound: summation over rows of up to ~10^5 elements in vector
# lanes (error growth ~ sqrt of the per-lane length for random data), transcendental functions
# accurate to a few ulp, and the O(1) constants dropped in the propagation below.
ERROR_FACTOR = 64.0


def unit_roundoff(dtype: torch.dtype) -> float:
    """Unit roundoff of the dtype the kernels accumulate in for a map of `dtype`."""
    return 2.0 ** -53 if dtype == torch.float64 else 2.0 ** -24


def _ncl(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], t.shape[1], -1)


def gct_error_scales(x, alpha, gamma, beta, dy, epsilon: float, mode: str, after_relu: bool) -> Dict[str, torch.Tensor]:
    """Error scales (in units of the unit roundoff) of GCT's y, dx, dalpha, dgamma, dbeta.
    Every argument is a float64 tensor (dy may be None: forward only)."""
    shape = x.shape
    v = _ncl(x)
    N, C = v.shape[0], v.shape[1]
    a, gm, bt = (p.reshape(1, C) for p in (alpha, gamma, beta))
    av, gv = a.abs(), gm.abs()
    if mode == "l2":
        m = v * v
    else:
        m = v if after_relu else v.abs()
    s = m.sum(-1)
    s_err = m.abs().sum(-1) + s.abs()
    if mode == "l2":
        root = (s + epsilon).sqrt()
        root_err = s_err / (2 * root) + root
        e = a * root
        e_err = av * root_err + e.abs()
        term, term_err = e * e, 2 * e.abs() * e_err
    else:
        root = root_err = None
        e = a * s
        e_err = av * s_err + e.abs()
        term, term_err = e.abs(), e_err
    T = term.sum(1, keepdim=True)
    T_err = term_err.sum(1, keepdim=True) + T
    if mode == "l2":
        denom = (T / C + epsilon).sqrt()
        denom_err = (T_err / C) / (2 * denom) + denom
    else:
        denom = T / C + epsilon
        denom_err = T_err / C + denom
    r = 1.0 / denom
    r_err = denom_err * r * r + r
    z = e * gm * r + bt
    z_err = gv * (e_err * r + e.abs() * r_err) + (e * gm * r).abs() + bt.abs() + z.abs()
    # g = 1 + tanh(z) is computed as 2 / (1 + exp(-2z)): relative roundings only (exp, the
    # sum, the division), no absolute error of the size of 1 where g is small.
    t = torch.tanh(z)
    dt = 1 - t * t
    g = 1 + t
    g_err = dt * z_err + 3 * g.abs()
    gx = g_err[..., None]
    out = {"y": (v.abs() * gx + (v * g[..., None]).abs()).reshape(shape)}
    if dy is None:
        return out

    d = _ncl(dy)
    G = (d * v).sum(-1)
    A = (d * v).abs().sum(-1) + G.abs()
    dz = G * dt  # dt computed as g(z) * g(-z): two gates and two products, relative roundings
    dz_err = A * dt + G.abs() * 2 * t.abs() * dt * z_err + 8 * dz.abs()
    q = (dz * gm * e).sum(1, keepdim=True)
    q_err = (gv * (dz_err * e.abs() + dz.abs() * e_err)).sum(1, keepdim=True) + (dz * gm * e).abs().sum(1, keepdim=True)
    first = dz * gm * r
    first_err = gv * (dz_err * r + dz.abs() * r_err) + first.abs()
    if mode == "l2":
        second = q * r ** 3 * e / C
        second_err = (q_err * r ** 3 * e.abs() + q.abs() * (3 * r * r * r_err * e.abs() + r ** 3 * e_err)) / C + second.abs()
    else:
        second = q * r * r * torch.sign(e) / C
        second_err = (q_err * r * r + q.abs() * 2 * r * r_err) / C + second.abs()
    de = first - second
    de_err = first_err + second_err + de.abs()
    if mode == "l2":
        dalpha = de * root
        dalpha_err = de_err * root + de.abs() * root_err + dalpha.abs()
        k = de * a / root
        k_err = av * (de_err / root + de.abs() * root_err / (root * root)) + k.abs()
        f = v
    else:
        dalpha = de * s
        dalpha_err = de_err * s.abs() + de.abs() * s_err + dalpha.abs()
        k = de * a
        k_err = av * de_err + k.abs()
        f = torch.ones_like(v) if after_relu else torch.sign(v)
    dgamma = dz * e * r
    dgamma_err = dz_err * e.abs() * r + dz.abs() * (e_err * r + e.abs() * r_err) + dgamma.abs()
    dx_err = gx * d.abs() + k_err[..., None] * f.abs() + (g[..., None] * d).abs() + (k[..., None] * f).abs()
    out["x"] = dx_err.reshape(shape)
    for name, per_sample, p in (("alpha", dalpha_err, alpha), ("gamma", dgamma_err, gamma), ("beta", dz_err, beta)):
        out[name] = per_sample.sum(0).reshape(p.shape)
    return out


def _act(name, u):
    return torch.relu(u) if name == "relu" else torch.nn.functional.silu(u)


def _act_grad(name, u):
    if name == "relu":
        return (u > 0).to(u.dtype)
    sg = torch.sigmoid(u)
    return sg * (1 + u * (1 - sg))


def _gate(name, o):
    return torch.sigmoid(o) if name == "sigmoid" else torch.clamp(o + 3, 0, 6) / 6


def _gate_grad(name, o):
    if name == "sigmoid":
        sg = torch.sigmoid(o)
        return sg * (1 - sg)
    return ((o > -3) & (o < 3)).to(o.dtype) / 6


def se_error_scales(x, w1, b1, w2, b2, dy, activation: str, gate: str, identity=None,
                    mask: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """Error scales of SE's (or se_residual's, with `identity`) y and gradients. `mask` is
    the relu epilogue's mask (y > 0) for se_residual's backward, None otherwise."""
    shape = x.shape
    v = _ncl(x)
    N, C, L = v.shape
    L = max(L, 1)
    W1, W2 = w1, w2
    aW1, aW2 = W1.abs(), W2.abs()
    zb1 = torch.zeros(W1.shape[0], dtype=x.dtype) if b1 is None else b1
    zb2 = torch.zeros(W2.shape[0], dtype=x.dtype) if b2 is None else b2
    p = v.sum(-1) / L
    p_err = v.abs().sum(-1) / L + p.abs()
    u = p @ W1.t() + zb1
    u_err = p_err @ aW1.t() + p.abs() @ aW1.t() + zb1.abs() + u.abs()
    h = _act(activation, u)
    h_err = _act_grad(activation, u).abs() * u_err + 2 * h.abs() + (0 if activation == "relu" else u_err)
    o = h @ W2.t() + zb2
    o_err = h_err @ aW2.t() + h.abs() @ aW2.t() + zb2.abs() + o.abs()
    s = _gate(gate, o)
    gp = _gate_grad(gate, o)
    s_err = gp.abs() * o_err + 2 * s.abs() + 1
    sx = s_err[..., None]
    y_err = v.abs() * sx + (v * s[..., None]).abs()
    if identity is not None:
        y_err = y_err + _ncl(identity).abs()
    out = {"y": y_err.reshape(shape)}
    if dy is None:
        return out

    g = _ncl(dy) if mask is None else _ncl(dy) * _ncl(mask).to(x.dtype)
    G = (g * v).sum(-1)
    A = (g * v).abs().sum(-1) + G.abs()
    if gate == "sigmoid":
        gp_err = (1 - 2 * s).abs() * s_err + 2
    else:
        gp_err = torch.zeros_like(gp)
    do = G * gp
    do_err = A * gp.abs() + G.abs() * gp_err + do.abs()
    dh = do @ W2
    dh_err = do_err @ aW2 + do.abs() @ aW2 + dh.abs()
    ap = _act_grad(activation, u)
    ap_err = torch.zeros_like(ap) if activation == "relu" else 0.5 * u_err + 2
    du = dh * ap
    du_err = dh_err * ap.abs() + dh.abs() * ap_err + du.abs()
    dP = du @ W1
    dP_err = du_err @ aW1 + du.abs() @ aW1 + dP.abs()
    dx_err = sx * g.abs() + (s[..., None] * g).abs() + (dP_err / L)[..., None] + (dP.abs() / L)[..., None]
    out["x"] = dx_err.reshape(shape)
    if identity is not None:
        out["identity"] = g.abs().reshape(shape)
    out["w1"] = du_err.t() @ p.abs() + du.abs().t() @ p_err + du.abs().t() @ p.abs()
    out["w2"] = do_err.t() @ h.abs() + do.abs().t() @ h_err + do.abs().t() @ h.abs()
    out["b1"] = du_err.sum(0) + du.abs().sum(0)
    out["b2"] = do_err.sum(0) + do.abs().sum(0)
    return out
