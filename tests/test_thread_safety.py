"""The CPU ops called concurrently from several Python threads (each with inputs of its own,
forward and backward through autograd, every op) give bit for bit the results of the same
calls made one after the other."""

from __future__ import annotations

import threading

import pytest
import torch

import gct_fused
from helpers import backend_device, make_gct_params, make_map, make_se_params

THREADS = 6
ROUNDS = 4


def _job(k: int):
    """Thread k's calls: a shape, layout, dtype and op of its own (every op and layout path)."""
    shapes = [(4, 16, 13, 11), (2, 64, 7, 7), (3, 5, 40, 41), (8, 32, 9, 9), (1, 3, 190, 190), (5, 24, 6, 6)]
    layouts = ["nchw", "channels_last", "strided", "nchw", "nchw", "channels_last"]
    dtypes = [torch.float32, torch.bfloat16, torch.float64, torch.float32, torch.float32, torch.float16]
    shape, layout, dtype = shapes[k % 6], layouts[k % 6], dtypes[k % 6]
    pdtype = torch.float64 if dtype == torch.float64 else torch.float32
    x = make_map(shape, dtype, "cpu", layout, seed=100 + k)
    dy = make_map(shape, dtype, "cpu", layout, seed=200 + k)
    identity = make_map(shape, dtype, "cpu", "nchw", seed=300 + k)
    c = shape[1]
    kind = k % 3
    if kind == 0:
        params = make_gct_params(c, pdtype, "cpu", seed=k)
        mode = ("l2", "l1")[k % 2]

        def fn(x_, i_, *p):
            return gct_fused.gct(x_, *p, mode=mode, backend="cpu")
    elif kind == 1:
        params = make_se_params(c, 4, pdtype, "cpu", seed=k)

        def fn(x_, i_, *p):
            return gct_fused.squeeze_excite(x_, *p, "silu", "sigmoid", backend="cpu")
    else:
        params = make_se_params(c, 4, pdtype, "cpu", seed=k)

        def fn(x_, i_, *p):
            return gct_fused.se_residual(x_, i_, *p, backend="cpu")

    def call():
        leaves = [x.detach().requires_grad_(True), identity.detach().requires_grad_(True)]
        p_leaves = [p.detach().requires_grad_(True) for p in params]
        y = fn(*leaves, *p_leaves)
        grads = torch.autograd.grad(y, leaves + p_leaves, dy, allow_unused=True)
        return [y.detach()] + [g for g in grads if g is not None]

    return call


@pytest.mark.parametrize("torch_threads", [1, 2])
def test_cpu_ops_from_several_python_threads(torch_threads):
    backend_device("cpu")
    saved = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        jobs = [_job(k) for k in range(THREADS)]
        expected = [job() for job in jobs]  # one after the other
        results = [[None] * ROUNDS for _ in range(THREADS)]
        errors = []
        start = threading.Barrier(THREADS)

        def worker(k):
            try:
                start.wait()
                for r in range(ROUNDS):
                    results[k][r] = jobs[k]()
            except BaseException as exc:  # reported below, with the thread
                errors.append((k, exc))

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not any(t.is_alive() for t in threads), "a thread hung"
        assert not errors, f"errors in threads: {errors}"
        for k in range(THREADS):
            for r in range(ROUNDS):
                got = results[k][r]
                assert len(got) == len(expected[k])
                for j, (a, b) in enumerate(zip(got, expected[k])):
                    assert torch.equal(a, b), f"thread {k} round {r}: output {j} differs from the sequential call"
    finally:
        torch.set_num_threads(saved)
