"""The direct C++ entries of the forward ops (gct_fused._C.gct, squeeze_excite, se_residual;
csrc/python_calls.cpp), which gct_fused.functional tries before its Python path.

They must (1) take the common call and give bit for bit what the Python path (torch.ops)
gives, gradients included; (2) hand every other call back (return None) so that the
Python path validates it, resolves the backend and raises its errors; (3) keep what goes
through the dispatcher visible to dispatch modes, and leave torch.function modes,
subclasses, tracing and the GCT_FUSED_BACKEND override to the Python path.
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import gct_fused
import gct_fused.functional as functional
from gct_fused import dropin
from helpers import grads_of, make_gct_params, make_map, make_se_params

pytestmark = pytest.mark.skipif(functional._DIRECT is None, reason="gct_fused._C is not built")
DIRECT = functional._DIRECT

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LAYOUTS = ["nchw", "channels_last", "strided"]
SHAPE = (3, 12, 5, 6)


def _param_dtype(dtype, mixed):
    return torch.float32 if mixed else dtype


def _gct_args(dtype, layout, mixed=False, grad=False):
    x = make_map(SHAPE, dtype, "cpu", layout).requires_grad_(grad)
    params = [p.requires_grad_(grad) for p in make_gct_params(SHAPE[1], _param_dtype(dtype, mixed), "cpu")]
    return x, params


def _se_args(dtype, layout, mixed=False, grad=False, bias=True):
    x = make_map(SHAPE, dtype, "cpu", layout).requires_grad_(grad)
    params = [p if p is None else p.requires_grad_(grad)
              for p in make_se_params(SHAPE[1], 4, _param_dtype(dtype, mixed), "cpu", bias=bias)]
    return x, params


def _through_python(fn, *args, **kwargs):
    """fn with the direct entries switched off: the Python path (validation, torch.ops)."""
    saved = functional._DIRECT
    functional._DIRECT = None
    try:
        return fn(*args, **kwargs)
    finally:
        functional._DIRECT = saved


def _assert_same_bits(direct, python, what):
    """Outputs and gradients of the two paths, in the same order: the same values, dtypes,
    shapes and strides (None on both sides: an absent bias)."""
    for i, (u, v) in enumerate(zip(direct, python, strict=True)):
        if u is None and v is None:
            continue
        assert u.dtype == v.dtype and u.shape == v.shape and u.stride() == v.stride(), f"{what} [{i}]"
        assert torch.equal(u, v), f"{what} [{i}]"


def _assert_same_on_both_paths(fn, tensors, dy, what):
    """fn(*tensors) and its gradients (helpers.grads_of) bit for bit the same through the
    direct entries and through the Python path."""
    y, grads = grads_of(fn, tensors, dy)
    y_python, grads_python = _through_python(grads_of, fn, tensors, dy)
    _assert_same_bits([y] + grads, [y_python] + grads_python, what)


# ------------------------------------------------------------------ the common call is taken

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mixed", [False, True], ids=["same-dtype", "fp32-params"])
def test_gct_direct_equals_python_path(dtype, layout, mixed):
    if mixed and dtype not in (torch.float16, torch.bfloat16):
        pytest.skip("float32 parameters mix with float16/bfloat16 maps only")
    x, (alpha, gamma, beta) = _gct_args(dtype, layout, mixed)
    dy = make_map(SHAPE, dtype, "cpu", seed=7)
    for mode, after_relu, eps in (("l2", False, 1e-5), ("l1", False, 0), ("l1", True, 1e-3)):
        assert DIRECT.gct(x, alpha, gamma, beta, eps, mode, after_relu, "auto") is not None

        def run(*tensors):
            return gct_fused.gct(*tensors, eps, mode, after_relu)
        _assert_same_on_both_paths(run, [x, alpha, gamma, beta], dy, f"gct {mode} {after_relu}")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_se_direct_equals_python_path(dtype, layout, bias):
    x, (w1, b1, w2, b2) = _se_args(dtype, layout, bias=bias)
    identity = make_map(SHAPE, dtype, "cpu", layout, seed=9)
    dy = make_map(SHAPE, dtype, "cpu", seed=7)
    for activation, gate in (("relu", "sigmoid"), ("silu", "hardsigmoid")):
        assert DIRECT.squeeze_excite(x, w1, b1, w2, b2, activation, gate, "cpu") is not None

        def se(*tensors):
            return gct_fused.squeeze_excite(*tensors, activation, gate)
        _assert_same_on_both_paths(se, [x, w1, b1, w2, b2], dy, f"se {activation} {gate}")
        for after in ("relu", "none"):
            assert DIRECT.se_residual(x, identity, w1, b1, w2, b2, activation, gate, after, "auto") is not None

            def residual(*tensors):
                return gct_fused.se_residual(*tensors, activation, gate, after)
            _assert_same_on_both_paths(residual, [x, identity, w1, b1, w2, b2], dy,
                                       f"se_residual {activation} {gate} {after}")


def test_modules_take_the_direct_entries(fused_calls):
    x = make_map(SHAPE, torch.float32, "cpu")
    gct_fused.GCT(SHAPE[1])(x)
    gct_fused.SqueezeExcite(SHAPE[1], 4)(x)
    assert fused_calls == ["gct_forward", "se_forward"]
    functional.fused_op("cpu", "gct_forward")  # the recorder also sees the Python path
    assert fused_calls[-1] == "gct_forward"


# ------------------------------------- the modules call the entries with their _parameters
# (entry_answers: tests/conftest.py)

def _gct_module(dtype):
    module = gct_fused.GCT(SHAPE[1]).to(dtype)
    with torch.no_grad():
        for p, v in zip((module.alpha, module.gamma, module.beta), make_gct_params(SHAPE[1], dtype, "cpu")):
            p.copy_(v.reshape(p.shape))
    return module


def _se_module(dtype, bias=True):
    module = gct_fused.SqueezeExcite(SHAPE[1], 4, bias=bias).to(dtype)
    with torch.no_grad():
        w1, b1, w2, b2 = make_se_params(SHAPE[1], 4, dtype, "cpu", bias=bias)
        module.fc1.weight.copy_(w1)
        module.fc2.weight.copy_(w2)
        if bias:
            module.fc1.bias.copy_(b1)
            module.fc2.bias.copy_(b2)
    return module


def _module_grads(module, x, dy, fn=None):
    """(fn or module)(x) backpropagated with dy: [y, dx, then the grad of every parameter]."""
    x = x.detach().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    y = (fn or module)(x)
    y.backward(dy)
    return [y.detach(), x.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("make", [_gct_module, _se_module, lambda dtype: _se_module(dtype, bias=False)],
                         ids=["gct", "se", "se-no-bias"])
def test_module_forward_takes_the_entry_and_equals_the_python_path(entry_answers, make, dtype, layout):
    module = make(dtype)
    x = make_map(SHAPE, dtype, "cpu", layout)
    dy = make_map(SHAPE, dtype, "cpu", seed=7)
    direct = _module_grads(module, x, dy)
    assert entry_answers == [("gct_module" if isinstance(module, gct_fused.GCT) else "se_module", True)]
    _assert_same_bits(direct, _through_python(_module_grads, module, x, dy), type(module).__name__)


class _Doubled(torch.nn.Module):
    def forward(self, p):
        return 2 * p


def test_parametrized_gct_parameter_takes_the_full_path(entry_answers):
    """A parametrized parameter is not in _parameters: the entry is handed a non-tensor and
    declines, and the full path reads the parametrized value."""
    from torch.nn.utils import parametrize
    module = _gct_module(torch.float32)
    x = make_map(SHAPE, torch.float32, "cpu")
    parametrize.register_parametrization(module, "alpha", _Doubled())
    y = module(x)
    assert entry_answers[:2] == [("gct_module", False), ("gct", False)]  # a subclass now, then forward
    assert torch.equal(y, gct_fused.gct(x, 2 * module.parametrizations.alpha.original, module.gamma, module.beta))


def test_parametrized_se_bias_is_not_taken_for_no_bias(entry_answers):
    """A bias missing from _parameters must not reach the entry as None (no bias)."""
    from torch.nn.utils import parametrize
    module = _se_module(torch.float32)
    x = make_map(SHAPE, torch.float32, "cpu")
    parametrize.register_parametrization(module.fc1, "bias", _Doubled())
    y = module(x)
    assert entry_answers[:2] == [("se_module", False), ("squeeze_excite", False)]
    fc1, fc2 = module.fc1, module.fc2
    want = gct_fused.squeeze_excite(x, fc1.weight, 2 * fc1.parametrizations.bias.original, fc2.weight, fc2.bias)
    assert torch.equal(y, want)
    assert not torch.equal(y, gct_fused.squeeze_excite(x, fc1.weight, None, fc2.weight, fc2.bias))


def test_parameter_replaced_by_a_plain_attribute(entry_answers):
    module = _gct_module(torch.float32)
    x = make_map(SHAPE, torch.float32, "cpu")
    alpha = module.alpha.detach() * 3
    del module.alpha
    module.alpha = alpha  # a plain tensor attribute now, not in _parameters
    y = module(x)
    assert entry_answers[:2] == [("gct_module", False), ("gct", False)]
    assert torch.equal(y, gct_fused.gct(x, alpha, module.gamma, module.beta))


def test_functional_call_uses_the_given_parameters(entry_answers):
    """torch.func.functional_call swaps the entries of _parameters, plain tensors included:
    the entry takes the call with the given values."""
    module = _gct_module(torch.float32)
    x = make_map(SHAPE, torch.float32, "cpu")
    alpha, gamma, beta = (t.reshape(1, SHAPE[1], 1, 1) for t in make_gct_params(SHAPE[1], torch.float32, "cpu", seed=5))
    y = torch.func.functional_call(module, {"alpha": alpha, "gamma": gamma, "beta": beta}, (x,))
    assert entry_answers == [("gct_module", True)]
    assert torch.equal(y, _through_python(gct_fused.gct, x, alpha, gamma, beta))
    assert not torch.equal(y, module(x))


# ------------------------------- the SE drop-ins call the entries that take 1x1 conv weights

_DROPINS = {
    "SELayer": lambda: dropin.SELayer(SHAPE[1], 3),  # Linear layers at a dotted path (fc.0, fc.2)
    "SqueezeExcitation": lambda: dropin.SqueezeExcitation(SHAPE[1], 4, torch.nn.SiLU, torch.nn.Hardsigmoid),
    "SEModule": lambda: dropin.SEModule(SHAPE[1], rd_channels=4),
    "SEModule-no-bias": lambda: dropin.SEModule(SHAPE[1], rd_channels=4, bias=False),
    "EfficientNetSqueezeExcite": lambda: dropin.EfficientNetSqueezeExcite(SHAPE[1], act_layer=torch.nn.SiLU),
    "LegacySEModule": lambda: dropin.LegacySEModule(SHAPE[1], 4),
}


def _dropin(name, dtype):
    torch.manual_seed(0)
    module = _DROPINS[name]().to(dtype)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)
    return module


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(_DROPINS))
def test_dropins_take_the_conv_weight_entries_and_equal_the_python_path(entry_answers, name, dtype, layout):
    """The drop-ins' calls go to se_module, their forwards pass the layers' Parameters
    (1x1 conv weights 4-D) to squeeze_excite_conv / se_residual_conv: outputs and every
    gradient (the 4-D weights' too) bit for bit what the Python path (nn.Module.__call__,
    se_weights(), flatten(1), torch.ops) gives."""
    module = _dropin(name, dtype)
    x = make_map(SHAPE, dtype, "cpu", layout)
    identity = make_map(SHAPE, dtype, "cpu", seed=5)
    dy = make_map(SHAPE, dtype, "cpu", seed=7)
    calls = {"call": (module, "se_module"), "forward": (module.forward, "squeeze_excite_conv"),
             "forward_residual": (lambda t: module.forward_residual(t, identity, "relu"), "se_residual_conv")}
    for what, (fn, entry) in calls.items():
        entry_answers.clear()
        direct = _module_grads(module, x, dy, fn)
        assert entry_answers == [(entry, True)], what
        _assert_same_bits(direct, _through_python(_module_grads, module, x, dy, fn), f"{name} {what}")


def test_effective_se_folds_its_weights_in_python(entry_answers):
    """ESE's se_weights() are computed (its one layer folded into the op's two): it must not
    pass its layer's Parameters to the entry."""
    module = dropin.EffectiveSEModule(SHAPE[1])
    module(make_map(SHAPE, torch.float32, "cpu"))
    assert entry_answers == [("se_module", False), ("squeeze_excite", True)]


def test_public_entries_keep_2d_weights():
    """1x1 conv weights are taken by the drop-ins' entries only: the public functional API
    takes (R, C) and (C, R) weights on every backend."""
    x = make_map(SHAPE, torch.float32, "cpu")
    w1, b1, w2, b2 = make_se_params(SHAPE[1], 4, torch.float32, "cpu")
    conv1, conv2 = w1[:, :, None, None], w2[:, :, None, None]
    assert DIRECT.squeeze_excite(x, conv1, b1, conv2, b2, "relu", "sigmoid", "auto") is None
    assert DIRECT.se_residual(x, x, conv1, b1, conv2, b2, "relu", "sigmoid", "relu", "auto") is None
    assert torch.equal(DIRECT.squeeze_excite_conv(x, conv1, b1, conv2, b2, "relu", "sigmoid", "auto"),
                       DIRECT.squeeze_excite(x, w1, b1, w2, b2, "relu", "sigmoid", "auto"))
    assert DIRECT.squeeze_excite_conv(x, w1[:, :, None], b1, conv2, b2, "relu", "sigmoid", "auto") is None  # 3-D
    assert DIRECT.squeeze_excite_conv(x, w1[:, :, None, None].expand(4, SHAPE[1], 1, 2), b1, conv2, b2,
                                      "relu", "sigmoid", "auto") is None  # not 1x1


def test_parametrized_dropin_weight_takes_the_full_path(entry_answers):
    from torch.nn.utils import parametrize
    module = _dropin("SEModule", torch.float32)
    x = make_map(SHAPE, torch.float32, "cpu")
    parametrize.register_parametrization(module.fc1, "weight", _Doubled())
    y = module(x)
    assert entry_answers[:2] == [("se_module", False), ("squeeze_excite_conv", False)]
    w1 = 2 * module.fc1.parametrizations.weight.original
    assert torch.equal(y, gct_fused.squeeze_excite(x, w1.flatten(1), module.fc1.bias, module.fc2.weight.flatten(1),
                                                   module.fc2.bias))


def test_parameters_and_no_grad():
    """nn.Parameter counts as a plain tensor; without grad mode no graph is recorded."""
    module = gct_fused.GCT(SHAPE[1])
    x = make_map(SHAPE, torch.float32, "cpu")
    assert DIRECT.gct(x, module.alpha, module.gamma, module.beta, 1e-5, "l2", False, "auto").grad_fn is not None
    with torch.no_grad():
        y = DIRECT.gct(x, module.alpha, module.gamma, module.beta, 1e-5, "l2", False, "auto")
    assert y.grad_fn is None and not y.requires_grad
    assert torch.equal(y, x)  # the published init is the identity


# ------------------------------------------------------------- every other call is handed back

def _gct_call(**change):
    x, (alpha, gamma, beta) = _gct_args(torch.float32, "nchw")
    args = dict(x=x, alpha=alpha, gamma=gamma, beta=beta, epsilon=1e-5, mode="l2", after_relu=False, backend="auto")
    args.update(change)
    return DIRECT.gct(*args.values())


class _Sub(torch.Tensor):
    pass


@pytest.mark.parametrize("change", [
    dict(backend="reference"), dict(backend="triton"), dict(backend="cuda"), dict(backend="AUTO"), dict(backend=None),
    dict(x=torch.zeros(3, 12, 5, 6).as_subclass(_Sub)), dict(alpha=torch.ones(12).as_subclass(_Sub)),
    dict(x=torch.zeros(3, 12, 5, 6, device="meta")), dict(x=torch.zeros(12)), dict(x=torch.zeros(3, 12, dtype=torch.int32)),
    dict(x=[[1.0]]), dict(alpha=1.0), dict(alpha=torch.ones(11)), dict(gamma=torch.ones(12, dtype=torch.float64)),
    dict(beta=torch.ones(12, device="meta")), dict(epsilon=-1e-5), dict(epsilon=float("nan")), dict(epsilon=True),
    dict(epsilon="1e-5"), dict(epsilon=10 ** 400), dict(mode="l3"), dict(mode=b"l2"), dict(after_relu=1),
    dict(after_relu=None),
], ids=lambda c: "-".join(f"{k}={v!r}"[:40] for k, v in c.items()))
def test_gct_hands_back(change):
    assert _gct_call(**change) is None


def test_gct_float16_params_with_float32_map_handed_back():
    x = make_map(SHAPE, torch.bfloat16, "cpu")
    half_params = [p.half() for p in make_gct_params(SHAPE[1], torch.float32, "cpu")]
    assert DIRECT.gct(x, *half_params, 1e-5, "l2", False, "auto") is None  # float16 params, bfloat16 map


def _se_call(**change):
    x, (w1, b1, w2, b2) = _se_args(torch.float32, "nchw")
    args = dict(x=x, w1=w1, b1=b1, w2=w2, b2=b2, activation="relu", gate="sigmoid", backend="auto")
    args.update(change)
    return DIRECT.squeeze_excite(*args.values())


@pytest.mark.parametrize("change", [
    dict(backend="reference"), dict(x=torch.zeros(3, 12, 5, 6).as_subclass(_Sub)), dict(x=torch.zeros(3, 12, 2, device="meta")),
    dict(w1=torch.zeros(4, 11)), dict(w1=torch.zeros(4, 12, 1)), dict(w2=torch.zeros(12, 5)), dict(w2=torch.zeros(11, 4)),
    dict(w2=torch.zeros(12, 4, dtype=torch.float64)), dict(b1=torch.zeros(5)), dict(b1=torch.zeros(1, 4)),
    dict(b2=torch.zeros(12, dtype=torch.float64)), dict(b2=torch.zeros(12).as_subclass(_Sub)), dict(b2=0.0),
    dict(activation="gelu"), dict(gate="tanh"), dict(activation=None),
], ids=lambda c: "-".join(f"{k}={v!r}"[:40] for k, v in c.items()))
def test_se_hands_back(change):
    assert _se_call(**change) is None


@pytest.mark.parametrize("change", [
    dict(identity=torch.zeros(3, 12, 5, 5)), dict(identity=torch.zeros(3, 12, 5, 6, dtype=torch.float64)),
    dict(identity=torch.zeros(3, 12, 5, 6).as_subclass(_Sub)), dict(identity=None), dict(activation_after="gelu"),
    dict(backend="reference"),
], ids=lambda c: "-".join(f"{k}={v!r}"[:40] for k, v in c.items()))
def test_se_residual_hands_back(change):
    x, (w1, b1, w2, b2) = _se_args(torch.float32, "nchw")
    args = dict(x=x, identity=torch.zeros(SHAPE), w1=w1, b1=b1, w2=w2, b2=b2, activation="relu", gate="sigmoid",
                activation_after="relu", backend="auto")
    assert DIRECT.se_residual(*args.values()) is not None
    args.update(change)
    assert DIRECT.se_residual(*args.values()) is None


def test_wrong_number_of_arguments_handed_back():
    x, (alpha, gamma, beta) = _gct_args(torch.float32, "nchw")
    assert DIRECT.gct(x, alpha, gamma, beta, 1e-5, "l2", False) is None
    assert DIRECT.squeeze_excite() is None
    assert DIRECT.se_residual(x) is None


@pytest.mark.parametrize("value,taken", [(None, True), ("", True), ("auto", True), ("cpu", True),
                                         ("reference", False), (" cpu", False)])
def test_backend_override_read_at_call_time(monkeypatch, value, taken):
    """GCT_FUSED_BACKEND set while the program runs: anything but auto/cpu goes to Python,
    which resolves it (" cpu" too, which it strips)."""
    if value is None:
        monkeypatch.delenv("GCT_FUSED_BACKEND", raising=False)
    else:
        monkeypatch.setenv("GCT_FUSED_BACKEND", value)
    assert (_gct_call() is not None) == taken


def test_backend_override_reference_runs_the_reference(monkeypatch, fused_calls):
    x, (alpha, gamma, beta) = _gct_args(torch.float64, "nchw")
    expected = gct_fused.reference.gct(x, alpha, gamma, beta, 1e-5, "l2", False)
    monkeypatch.setenv("GCT_FUSED_BACKEND", "reference")
    y = gct_fused.gct(x, alpha, gamma, beta)
    assert fused_calls == [] and torch.equal(y, expected)


def test_bad_arguments_still_raise_the_python_errors():
    x, (alpha, gamma, beta) = _gct_args(torch.float32, "nchw")
    with pytest.raises(ValueError, match=r"gct: alpha must hold 12 values"):
        gct_fused.gct(x, alpha[:11], gamma, beta)
    with pytest.raises(ValueError, match=r"gct: mode must be one of"):
        gct_fused.gct(x, alpha, gamma, beta, mode="l3")
    with pytest.raises(TypeError, match=r"gct: after_relu must be a bool"):
        gct_fused.gct(x, alpha, gamma, beta, after_relu=1)
    with pytest.raises(ValueError, match=r"backend must be one of"):
        gct_fused.gct(x, alpha, gamma, beta, backend="fast")


# ------------------------------------------------ modes, subclasses and tracing see the same op

def test_torch_function_mode_handed_back():
    seen = []

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    with Recorder():
        assert _gct_call() is None
        x, (alpha, gamma, beta) = _gct_args(torch.float32, "nchw")
        gct_fused.gct(x, alpha, gamma, beta)
    assert any("gct_forward" in str(f) for f in seen)


def test_dispatch_mode_sees_the_op_of_the_direct_entry():
    seen = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    x, (alpha, gamma, beta) = _gct_args(torch.float32, "nchw", grad=True)
    with Recorder():
        y = DIRECT.gct(x, alpha, gamma, beta, 1e-5, "l2", False, "auto")
        y.sum().backward()
    assert "gct_fused.gct_forward.default" in seen and "gct_fused.gct_backward.default" in seen


def test_jit_trace_handed_back():
    x, (alpha, gamma, beta) = _gct_args(torch.float32, "nchw")
    results = []

    def fn(x):
        results.append(DIRECT.gct(x, alpha, gamma, beta, 1e-5, "l2", False, "auto"))
        return x * 2

    torch.jit.trace(fn, (x,), check_trace=False)
    assert results == [None]


def test_kernel_errors_propagate_as_python_exceptions():
    """A failure inside the op (here: autograd refusing to save an inference-mode x for
    backward) comes back from the direct entry as the exception torch.ops raises, not as a
    crash or a None."""
    with torch.inference_mode():
        x, (alpha, gamma, beta) = _gct_args(torch.float32, "nchw")
    trainable = alpha.clone().requires_grad_()
    with pytest.raises(RuntimeError) as direct_error:
        DIRECT.gct(x, trainable, gamma, beta, 1e-5, "l2", False, "auto")
    with pytest.raises(RuntimeError) as python_error:
        torch.ops.gct_fused.gct_forward(x, trainable, gamma, beta, 1e-5, "l2", False)
    assert "Inference tensors cannot be saved for backward" in str(direct_error.value)
    assert type(direct_error.value) is type(python_error.value)
    assert str(direct_error.value) == str(python_error.value)


@pytest.mark.filterwarnings("ignore:There is a performance drop")
@pytest.mark.parametrize("path", ["direct", "python"])
def test_vmap_over_a_batch_of_maps(path):
    """torch.vmap reaches the op through PyTorch's per-sample fallback, on either path."""
    maps = make_map((3, 2, 12, 4, 5), torch.float64, "cpu")
    alpha, gamma, beta = make_gct_params(12, torch.float64, "cpu")
    w1, b1, w2, b2 = make_se_params(12, 4, torch.float64, "cpu")

    def both(x):
        return gct_fused.gct(x, alpha, gamma, beta), gct_fused.squeeze_excite(x, w1, b1, w2, b2)
    run = (lambda: torch.vmap(both)(maps)) if path == "direct" else (lambda: _through_python(torch.vmap(both), maps))
    y_gct, y_se = run()
    ref_gct = torch.stack([gct_fused.reference.gct(x, alpha, gamma, beta, 1e-5, "l2", False) for x in maps])
    ref_se = torch.stack([gct_fused.reference.squeeze_excite(x, w1, b1, w2, b2, "relu", "sigmoid") for x in maps])
    torch.testing.assert_close(y_gct, ref_gct, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y_se, ref_se, rtol=1e-12, atol=1e-12)


def test_inference_mode(fused_calls):
    """Serving code runs under torch.inference_mode(): the direct entries take those calls,
    record no graph, and give what the Python path gives."""
    x = make_map(SHAPE, torch.float32, "cpu", "channels_last")
    gct, se = gct_fused.GCT(SHAPE[1]), gct_fused.SqueezeExcite(SHAPE[1], 4)
    with torch.no_grad():
        gct.gamma.normal_()
    with torch.inference_mode():
        y = se(gct(x))
        y_python = _through_python(lambda: se(gct(x)))
    assert fused_calls == ["gct_forward", "se_forward", "gct_forward", "se_forward"]
    assert y.is_inference() and y.grad_fn is None and torch.equal(y, y_python)
    assert y.is_contiguous(memory_format=torch.channels_last)
