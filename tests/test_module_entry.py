"""The module entries (gct_fused._C.gct_module, se_module;
csrc/python_calls.cpp), which the __call__ of GCT, SqueezeExcite and the SE drop-ins try
before nn.Module.__call__.

They must take a call only where nn.Module.__call__ would run nothing but forward, with the
module's current parameters and options, and hand every other call back (None) so that hooks
run, subclasses' and instances' forwards are used, Module.compile() and torch.jit.trace see
the call, and bad input raises the Python errors. Bit-for-bit agreement of the taken calls
with the Python path (gradients included) is in test_direct_calls.py.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import gct_fused
import gct_fused.functional as functional
from gct_fused import dropin
from helpers import make_map

pytestmark = pytest.mark.skipif(functional._DIRECT is None, reason="gct_fused._C is not built")
DIRECT = functional._DIRECT
SHAPE = (2, 16, 5, 6)


def _gct():
    torch.manual_seed(0)
    module = gct_fused.GCT(SHAPE[1])
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)
    return module


def _se():
    torch.manual_seed(0)
    return gct_fused.SqueezeExcite(SHAPE[1], 4)


def _dropin(make):
    def build():
        torch.manual_seed(0)
        module = make()
        with torch.no_grad():
            for p in module.parameters():
                p.normal_(0, 0.5)
        return module
    return build


MODULES = {
    "gct": (_gct, "gct_module"),
    "se": (_se, "se_module"),
    "SEModule": (_dropin(lambda: dropin.SEModule(SHAPE[1], rd_channels=4)), "se_module"),
    "SELayer": (_dropin(lambda: dropin.SELayer(SHAPE[1], 4)), "se_module"),  # layers at fc.0, fc.2
    "SqueezeExcitation": (_dropin(lambda: dropin.SqueezeExcitation(SHAPE[1], 4)), "se_module"),
}


def _plain_call(module, x):
    """module(x) through nn.Module.__call__ and the Python path (no entry at all)."""
    saved = functional._DIRECT
    functional._DIRECT = None
    try:
        return torch.nn.Module.__call__(module, x)
    finally:
        functional._DIRECT = saved


@pytest.mark.parametrize("which", list(MODULES))
def test_plain_call_is_taken(entry_answers, which):
    make, entry = MODULES[which]
    module, x = make(), make_map(SHAPE, torch.float32, "cpu")
    y = module(x)
    assert entry_answers == [(entry, True)]
    assert torch.equal(y, _plain_call(module, x))


def _hooks(module, log):
    """Ways to put something between nn.Module.__call__ and forward: name -> (register, how
    the recorded hook shows up in the output, needs backward). register() returns the handle."""
    def double_input(mod, args):
        log.append("pre")
        return (2 * args[0],)

    def add_one(mod, args, out):
        log.append("post")
        return out + 1

    def add_one_kw(mod, args, kwargs, out):
        log.append("post_kw")
        return out + 1

    def backward_hook(mod, grad_in, grad_out):
        log.append("backward")

    def backward_pre_hook(mod, grad_out):
        log.append("backward_pre")

    nn_module = torch.nn.modules.module
    return {
        "forward_pre_hook": (lambda: module.register_forward_pre_hook(double_input), "pre", False),
        "forward_hook": (lambda: module.register_forward_hook(add_one), "post", False),
        "forward_hook_with_kwargs": (lambda: module.register_forward_hook(add_one_kw, with_kwargs=True),
                                     "post_kw", False),
        "full_backward_hook": (lambda: module.register_full_backward_hook(backward_hook), "backward", True),
        "backward_pre_hook": (lambda: module.register_full_backward_pre_hook(backward_pre_hook), "backward_pre",
                              True),
        "global_forward_pre_hook": (lambda: nn_module.register_module_forward_pre_hook(double_input), "pre", False),
        "global_forward_hook": (lambda: nn_module.register_module_forward_hook(add_one), "post", False),
        "global_backward_hook": (lambda: nn_module.register_module_full_backward_hook(backward_hook), "backward",
                                 True),
        "global_backward_pre_hook": (lambda: nn_module.register_module_full_backward_pre_hook(backward_pre_hook),
                                     "backward_pre", True),
    }


HOOKS = list(_hooks(None, []))


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("which", list(MODULES))
def test_hooks_hand_the_call_back_and_run(entry_answers, which, hook):
    make, entry = MODULES[which]
    module, x = make(), make_map(SHAPE, torch.float32, "cpu")
    log = []
    register, mark, backward = _hooks(module, log)[hook]
    handle = register()
    try:
        xg = x.clone().requires_grad_(True)
        y = module(xg)
        if backward:
            y.sum().backward()
    finally:
        handle.remove()
    assert entry_answers[0] == (entry, False)
    assert mark in log
    if mark == "pre":  # the hook's input reached forward
        assert torch.equal(y, _plain_call(module, 2 * x))
    elif mark.startswith("post"):  # the hook's output came back
        assert torch.equal(y, _plain_call(module, x) + 1)
    entry_answers.clear()
    module(x)
    assert entry_answers == [(entry, True)]  # taken again once the hook is gone


@pytest.mark.parametrize("which", list(MODULES))
def test_subclass_forward_is_used(entry_answers, which):
    make, entry = MODULES[which]
    base = type(make())

    class Doubled(base):
        def forward(self, x):
            return 2 * super().forward(x)

    module, x = make(), make_map(SHAPE, torch.float32, "cpu")
    doubled = Doubled.__new__(Doubled)
    doubled.__dict__.update(module.__dict__)
    y = doubled(x)
    assert entry_answers[0] == (entry, False)
    assert torch.equal(y, 2 * _plain_call(module, x))


@pytest.mark.parametrize("which", list(MODULES))
def test_forward_replaced_on_the_instance_is_used(entry_answers, which):
    make, entry = MODULES[which]
    module, x = make(), make_map(SHAPE, torch.float32, "cpu")
    module.forward = lambda t: t + 1
    assert torch.equal(module(x), x + 1)
    assert entry_answers == [(entry, False)]


@pytest.mark.parametrize("which", list(MODULES))
def test_keyword_and_extra_arguments_take_nn_module_call(entry_answers, which):
    make, entry = MODULES[which]
    module, x = make(), make_map(SHAPE, torch.float32, "cpu")
    name = list(inspect.signature(module.forward).parameters)[0]  # x, or input (torchvision)
    assert torch.equal(module(**{name: x}), _plain_call(module, x))
    assert all(name != entry for name, _ in entry_answers)
    with pytest.raises(TypeError):
        module(x, x)


def test_gct_options_and_parameters_read_at_call_time(entry_answers):
    module, x = _gct(), make_map(SHAPE, torch.float32, "cpu")
    module.epsilon, module.mode, module.after_relu = 0.25, "l1", True
    module.alpha = torch.nn.Parameter(module.alpha.detach() * 3)
    y = module(x.relu())
    assert entry_answers == [("gct_module", True)]
    want = gct_fused.reference.gct(x.relu(), module.alpha, module.gamma, module.beta, 0.25, "l1", True)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(y, _plain_call(module, x.relu()))


def test_se_options_and_layers_read_at_call_time(entry_answers):
    module, x = _se(), make_map(SHAPE, torch.float32, "cpu")
    module.activation, module.gate = "silu", "hardsigmoid"
    module.fc2 = torch.nn.Linear(4, SHAPE[1], bias=False)
    y = module(x)
    assert entry_answers == [("se_module", True)]
    want = gct_fused.reference.squeeze_excite(x, module.fc1.weight, module.fc1.bias, module.fc2.weight, None,
                                              "silu", "hardsigmoid")
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(y, _plain_call(module, x))


def test_compiled_module_takes_nn_module_call(entry_answers):
    module, x = _gct(), make_map(SHAPE, torch.float32, "cpu")
    module.compile(backend="eager")
    assert DIRECT.gct_module(module, x) is None
    torch.testing.assert_close(module(x), _plain_call(module, x), rtol=0, atol=0)
    assert all(name != "gct_module" or not taken for name, taken in entry_answers)


def test_bad_input_raises_the_python_error():
    module = _gct()
    with pytest.raises(ValueError, match="alpha must hold 17 values"):
        module(torch.randn(2, SHAPE[1] + 1, 3, 3))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        module([1.0])


def test_jit_trace_sees_the_module_call():
    module, x = _gct(), make_map(SHAPE, torch.float32, "cpu")
    traced = torch.jit.trace(torch.nn.Sequential(module), (x,), check_trace=False)
    assert "gct_fused.modules.GCT" in str(traced.graph)
    torch.testing.assert_close(traced(x), module(x), rtol=0, atol=0)


def test_entries_refuse_other_objects():
    x = make_map(SHAPE, torch.float32, "cpu")
    gct, se = _gct(), _se()
    assert DIRECT.gct_module(se, x) is None and DIRECT.se_module(gct, x) is None
    assert DIRECT.gct_module(object(), x) is None and DIRECT.gct_module(torch.nn.Identity(), x) is None
    assert DIRECT.gct_module(gct, "x") is None and DIRECT.gct_module(gct) is None
    assert DIRECT.se_module(se, x, x) is None
    with pytest.raises(TypeError):
        DIRECT.register_gct_module(gct)  # an instance, not a class


@pytest.mark.parametrize("which", ["SEModule", "SELayer", "SqueezeExcitation"])
def test_dropin_layers_read_at_call_time(entry_answers, which):
    """Layers replaced after construction (here: without bias) are what the entry reads."""
    make, entry = MODULES[which]
    module, x = make(), make_map(SHAPE, torch.float32, "cpu")
    reduce_path = type(module)._reduce.rsplit(".", 1)
    parent = module.get_submodule(reduce_path[0]) if len(reduce_path) == 2 else module
    old = getattr(parent, reduce_path[-1])
    setattr(parent, reduce_path[-1], torch.nn.Conv2d(old.in_channels if hasattr(old, "in_channels") else old.in_features,
                                                     4, 1, bias=False))
    y = module(x)
    assert entry_answers == [(entry, True)]
    assert torch.equal(y, _plain_call(module, x))


def test_unbatched_squeeze_excitation_goes_to_its_forward(entry_answers):
    """torchvision's SqueezeExcitation takes an unbatched (C, H, W) map; the entry leaves it to
    the drop-in's forward, which adds the batch dimension."""
    module = MODULES["SqueezeExcitation"][0]()
    # (C, H, W) with H == C: read as a batch of H maps of C channels it would be taken, wrongly
    x = make_map((SHAPE[1], SHAPE[1], 6), torch.float32, "cpu")
    y = module(x)
    assert entry_answers[0] == ("se_module", False)
    assert torch.equal(y, module(x[None])[0])


def test_effective_se_is_not_registered():
    module = dropin.EffectiveSEModule(SHAPE[1])
    assert DIRECT.se_module(module, make_map(SHAPE, torch.float32, "cpu")) is None
    with pytest.raises(TypeError):
        DIRECT.register_se_module(dropin.SEModule, "fc1", ("fc2",), "fused_activation", "fused_gate", True,
                                  False)  # a str, not a tuple
