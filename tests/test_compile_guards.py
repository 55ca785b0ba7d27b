"""Compiled == eager when the world changes between calls: guards, aliasing, Python effects,
return values, bounds checks and stage failures (issue: "@kiln.compile never returns a wrong
answer").

Each case builds a small world (a function and the Python state it reads) twice from the same
seeds: one copy runs eagerly, the other compiled. Between calls the case changes the world the
way a user would (rebinds a global, swaps a parameter, passes aliased tensors, ...), and every
call's result — values, dtypes, exceptions, printed text, side effects — must be the same.
"""

from __future__ import annotations

import collections
import contextlib
import io
import math
import random
import re
import types
import warnings

import numpy as np
import pytest

import kiln
import kiln.nn as nn
import kiln.nn.functional as F

BACKENDS = ["auto", "c", "triton"]
CASES: dict = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def exec_world(source: str, **env) -> dict:
    """Run `source` in a fresh module namespace (so its globals are the world's own)."""
    ns = {"__name__": "guard_world", "kiln": kiln, "nn": nn, "F": F, "np": np,
          "random": random, **env}
    exec(compile(source, "<world>", "exec"), ns)
    return ns


# ----------------------------------------------------------------------------- the harness

def observe(value):
    """What a result is, for comparison: arrays with dtype, nested structure, scalars."""
    if isinstance(value, kiln.Tensor):
        return ("tensor", value.dtype.name, value.requires_grad, np.array(value.detach().numpy()))
    if isinstance(value, kiln.Size):
        return ("Size", tuple(value))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [observe(v) for v in value])
    if isinstance(value, dict):
        return ("dict", {k: observe(v) for k, v in value.items()})
    if isinstance(value, float):
        return ("float", value, np.signbit(value))
    return (type(value).__name__, value)


def same(a, b, path="result"):
    assert type(a) is type(b), f"{path}: {a!r} vs {b!r}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape} vs " \
                                                           f"{b.dtype}{b.shape}"
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=path)
        np.testing.assert_array_equal(np.signbit(a), np.signbit(b), err_msg=path + " sign")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, float) and a != a:
        assert b != b, path
    elif isinstance(a, float):  # a logged loss.item(): float32 sums, reassociated by fusion
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6), f"{path}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def run_world(build, compiled: bool, backend: str, calls: int):
    kiln.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    world = build()
    fn = kiln.compile(world.fn, backend=backend) if compiled else world.fn
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(calls):
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out):
                    result = world.call(i, fn)
                seen.append(("ok", observe(result), out.getvalue()))
            except Exception as e:         # the same exception type and user line, eager and
                where = re.search(r"\(at ([^()]+:\d+)\)$", str(e))      # compiled
                seen.append(("raised", type(e).__name__, where and where.group(1),
                             out.getvalue()))
    after = observe(world.after()) if hasattr(world, "after") else None
    return seen, after, fn


def replays(fn) -> int:
    return sum(e.calls for e in fn.entries.values() if e.program is not None)


def expect_replays(n):
    def check(fn):
        assert replays(fn) >= n, [(e.calls, e.eager_reason) for e in fn.entries.values()]
    return check


def expect_eager(fn):
    assert replays(fn) == 0, [(e.calls, e.eager_reason) for e in fn.entries.values()]


def world(fn, call, after=None):
    return types.SimpleNamespace(fn=fn, call=call, after=after or (lambda: None))


# ----------------------------------------------------------------------------- state read from Python

@case
def global_float():
    ns = exec_world("ALPHA = 2.0\ndef f(x):\n    return x * ALPHA + 1\n")
    x = kiln.randn(5)

    def call(i, f):
        ns["ALPHA"] = [2.0, 2.0, 3.0, 3.0, 0.5][i]
        return f(x)
    return world(ns["f"], call)


global_float.calls = 5
global_float.check = expect_replays(2)


@case
def global_tensor_rebound():
    ns = exec_world("W = kiln.randn(4)\ndef f(x):\n    return (x + W).exp()\n")
    x = kiln.randn(4)

    def call(i, f):
        if i == 2:
            ns["W"] = kiln.randn(4)
        return f(x)
    return world(ns["f"], call)


@case
def global_int_used_as_dim():
    ns = exec_world("DIM = 0\ndef f(x):\n    return x.sum(DIM)\n")
    x = kiln.randn(3, 4)

    def call(i, f):
        ns["DIM"] = i % 2
        return f(x)
    return world(ns["f"], call)


@case
def global_bool_flag_branch():
    ns = exec_world("USE_TANH = True\ndef f(x):\n    return x.tanh() if USE_TANH else x.relu()\n")
    x = kiln.randn(6)

    def call(i, f):
        ns["USE_TANH"] = i < 2
        return f(x)
    return world(ns["f"], call)


@case
def global_string_mode():
    ns = exec_world("MODE = 'sum'\ndef f(x):\n    return x.sum() if MODE == 'sum' else x.mean()\n")
    x = kiln.randn(6)

    def call(i, f):
        ns["MODE"] = "sum" if i % 2 == 0 else "mean"
        return f(x)
    return world(ns["f"], call)


@case
def closure_rebound_nonlocal():
    w = kiln.randn(3)

    def make():
        nonlocal w

        def f(x):
            return x * w

        def swap():
            nonlocal w
            w = kiln.randn(3)
        return f, swap
    f, swap = make()
    x = kiln.randn(3)

    def call(i, g):
        if i == 2:
            swap()
        return g(x)
    return world(f, call)


@case
def closure_float_changes():
    scale = [1.0]

    def outer():
        s = 1.0

        def f(x):
            return x * s

        def set_s(v):
            nonlocal s
            s = v
        return f, set_s
    f, set_s = outer()
    x = kiln.randn(3)

    def call(i, g):
        set_s([1.0, 1.0, -2.0, 7.5][i])
        return g(x)
    del scale
    return world(f, call)


@case
def list_item_replaced():
    params = [kiln.randn(4), kiln.randn(4)]

    def f(x):
        return x * params[0] + params[1]
    x = kiln.randn(4)

    def call(i, g):
        if i == 2:
            params[0] = kiln.randn(4)
        return g(x)
    return world(f, call)


@case
def dict_item_replaced():
    cfg = {"w": kiln.randn(4), "scale": 2.0}

    def f(x):
        return x * cfg["w"] * cfg["scale"]
    x = kiln.randn(4)

    def call(i, g):
        if i == 1:
            cfg["scale"] = 3.0
        if i == 3:
            cfg["w"] = kiln.randn(4)
        return g(x)
    return world(f, call)


@case
def plain_object_attribute():
    class Config:
        def __init__(self):
            self.scale = 2.0
            self.bias = kiln.randn(3)
    cfg = Config()

    def f(x):
        return x * cfg.scale + cfg.bias
    x = kiln.randn(3)

    def call(i, g):
        if i == 2:
            cfg.scale = -1.0
        if i == 3:
            cfg.bias = kiln.randn(3)
        return g(x)
    return world(f, call)


@case
def argparse_namespace_and_dataclass_config():
    import argparse
    import dataclasses

    @dataclasses.dataclass
    class Config:
        scale: float = 2.0
    args, cfg = argparse.Namespace(shift=1.0), Config()

    def f(x):
        return x * cfg.scale + args.shift
    x = kiln.randn(3)

    def call(i, g):
        if i == 2:
            args.shift = -4.0
        if i == 3:
            cfg.scale = 0.5
        return g(x)
    return world(f, call)


@case
def library_object_state_is_not_guarded():
    tqdm = pytest.importorskip("tqdm")
    bar = tqdm.tqdm(total=10, disable=True)       # its counter changes on every call

    def f(x):
        return x * 2 if bar.disable else x
    x = kiln.randn(3)

    def call(i, g):
        bar.update(1)
        return g(x)
    return world(f, call)


library_object_state_is_not_guarded.check = expect_replays(2)


@case
def python_module_attribute():
    config = types.ModuleType("config")
    config.ALPHA = 0.5
    ns = exec_world("def f(x):\n    return x * config.ALPHA\n", config=config)
    x = kiln.randn(3)

    def call(i, g):
        config.ALPHA = [0.5, 0.5, 4.0, 4.0][i]
        return g(x)
    return world(ns["f"], call)


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.scale = 2.0

    def forward(self, x):
        return self.lin(x) * self.scale


@case
def module_non_tensor_attribute():
    model = Scaled()

    def f(x):
        return model(x)
    x = kiln.randn(2, 4)

    def call(i, g):
        if i == 2:
            model.scale = 4.0
        return g(x)
    return world(f, call)


@case
def compiled_module_attribute():
    model = Scaled()
    x = kiln.randn(2, 4)

    def call(i, g):
        if i == 2:
            model.scale = 0.25
        return g(x)
    return world(model, call)


@case
def compiled_bound_method():
    model = Scaled()
    x = kiln.randn(2, 4)

    def call(i, g):
        if i == 2:
            model.scale = 0.25
        return g(x)
    return world(model.forward, call)


@case
def module_passed_as_argument():
    def f(m, x):
        return m(x).sum(1)
    model = Scaled()
    x = kiln.randn(2, 4)

    def call(i, g):
        if i == 2:
            model.scale = -3.0
        return g(model, x)
    return world(f, call)


@case
def dropout_p_changed():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.0))

    def f(x):
        return model(x)
    x = kiln.randn(3, 4)

    def call(i, g):
        model[1].p = [0.0, 0.0, 1.0, 1.0][i]
        return g(x)
    return world(f, call)


@case
def parameter_replaced():
    model = nn.Linear(3, 2)

    def f(x):
        return model(x).sum(1)
    x = kiln.randn(4, 3)

    def call(i, g):
        if i == 2:
            model.weight = nn.Parameter(kiln.randn(2, 3))
        return g(x)
    return world(f, call)


@case
def buffer_replaced():
    class WithBuffer(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("offset", kiln.zeros(3))

        def forward(self, x):
            return x + self.offset
    model = WithBuffer()

    def f(x):
        return model(x)
    x = kiln.randn(3)

    def call(i, g):
        if i == 2:
            model.offset = kiln.ones(3)
        return g(x)
    return world(f, call)


@case
def train_eval_switch():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))

    def f(x):
        return model(x)
    x = kiln.randn(5, 4)

    def call(i, g):
        model.train(i % 2 == 0)
        return g(x).detach()
    return world(f, call, after=lambda: model[1].running_mean)


@case
def requires_grad_flag_of_state_changed():
    w = kiln.randn(3).requires_grad_()

    def f(x):
        return (x * w).sum()
    x = kiln.randn(3)

    def call(i, g):
        if i == 2:
            w.requires_grad_(False)
        out = g(x)
        return out.requires_grad
    return world(f, call)


@case
def helper_function_reads_a_global():
    ns = exec_world("BETA = 1.0\ndef helper(x):\n    return x * BETA\n"
                    "def f(x):\n    return helper(x) + 1\n")
    x = kiln.randn(3)

    def call(i, g):
        ns["BETA"] = [1.0, 1.0, 5.0, 5.0][i]
        return g(x)
    return world(ns["f"], call)


@case
def global_numpy_array_mutated():
    table = np.arange(4, dtype=np.float32)

    def f(x):
        return x + kiln.tensor(table)
    x = kiln.randn(4)

    def call(i, g):
        if i == 2:
            table[0] = 100.0
        return g(x)
    return world(f, call)


# ----------------------------------------------------------------------------- arguments

@case
def same_tensor_twice_with_inplace_write():
    def f(a, b):
        a.add_(1)
        return a * b

    def call(i, g):
        if i < 2:
            a, b = kiln.ones(3), kiln.full((3,), 2.0)
            return g(a, b)
        a = kiln.full((3,), 2.0)
        return g(a, a)
    return world(f, call)


@case
def overlapping_views_with_inplace_write():
    def f(a, b):
        a.mul_(2)
        return a + b

    def call(i, g):
        buf = kiln.arange(8).float()
        if i < 2:
            other = kiln.arange(8).float()
            return g(buf[0:4], other[1:5]), buf
        return g(buf[0:4], buf[1:5]), buf
    return world(f, call)


@case
def arguments_sliced_from_one_tensor_while_state_is_written():
    # a language model's inputs and targets, slices of one corpus tensor, only read: the
    # program writes its own state in place and still replays
    state = kiln.zeros(4)

    def f(x, y):
        state.add_(x * y)
        return state + y

    def call(i, g):
        corpus = kiln.arange(10).float() + i
        return g(corpus[0:4], corpus[1:5])
    return world(f, call, after=lambda: state)


arguments_sliced_from_one_tensor_while_state_is_written.check = expect_replays(3)


@case
def argument_written_through_an_overlapping_slice_from_the_start():
    def f(a, b):
        a.add_(1)
        return a * b

    def call(i, g):
        buf = kiln.arange(8).float() + i
        return g(buf[0:4], buf[2:6]), buf
    return world(f, call)


argument_written_through_an_overlapping_slice_from_the_start.check = expect_eager


@case
def argument_aliases_written_state():
    state = kiln.zeros(3)

    def f(x):
        state.add_(x)
        return state * 2 + x

    def call(i, g):
        if i < 2:
            return g(kiln.ones(3))
        return g(state)
    return world(f, call, after=lambda: state)


@case
def int_then_float_scalar():
    def f(x, k):
        return x * k
    x = kiln.arange(4)

    def call(i, g):
        return g(x, [2, 2, 2.0, 2.0][i])
    return world(f, call)


@case
def true_then_one():
    def f(x, k):
        return x + k
    x = kiln.arange(4)

    def call(i, g):
        return g(x, [True, True, 1, 1][i])
    return world(f, call)


@case
def zero_then_negative_zero():
    def f(x, k):
        return x * k
    x = kiln.ones(3)

    def call(i, g):
        return g(x, [0.0, 0.0, -0.0, -0.0][i])
    return world(f, call)


@case
def nan_argument_replays():
    def f(x, k):
        return x + k
    x = kiln.ones(3)

    def call(i, g):
        return g(x, float("nan"))
    return world(f, call)


nan_argument_replays.check = expect_replays(2)


@case
def keyword_argument_changes():
    def f(x, *, scale=1.0, shift=0):
        return x * scale + shift
    x = kiln.randn(3)

    def call(i, g):
        return g(x, scale=[1.0, 1.0, 2.0, 2.0][i], shift=[0, 1, 1, 1][i])
    return world(f, call)


# ----------------------------------------------------------------------------- Python effects

@case
def numpy_random_draw():
    def f(x):
        return x * float(np.random.rand())
    x = kiln.ones(3)
    return world(f, lambda i, g: g(x))


numpy_random_draw.check = expect_eager


@case
def python_random_draw():
    def f(x):
        return x + random.random()
    x = kiln.ones(3)
    return world(f, lambda i, g: g(x))


@case
def python_random_randint():
    def f(x):
        return x * random.randint(1, 100)
    x = kiln.ones(3)
    return world(f, lambda i, g: g(x))


@case
def numpy_generator_draw():
    rng = np.random.default_rng(0)

    def f(x):
        return x + rng.normal()
    x = kiln.ones(3)
    return world(f, lambda i, g: g(x))


@case
def print_inside():
    def f(x):
        print("step")
        return x * 2
    x = kiln.ones(3)
    return world(f, lambda i, g: g(x))


@case
def write_to_stdout_stream():
    import sys

    def f(x):
        sys.stdout.write("w\n")
        return x * 2
    x = kiln.ones(3)
    return world(f, lambda i, g: g(x))


@case
def list_append_in_training_step():
    model = nn.Linear(4, 1)
    opt = kiln.optim.SGD(model.parameters(), lr=0.1)
    log = []

    def step(x, y):
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        log.append(loss.detach())
        return loss
    x, y = kiln.randn(8, 4), kiln.randn(8, 1)
    return world(step, lambda i, g: g(x, y), after=lambda: [len(log)] + log)


list_append_in_training_step.calls = 6


@case
def dict_counter_mutation():
    stats = {"n": 0}

    def f(x):
        stats["n"] += 1
        return x * 2
    x = kiln.ones(2)
    return world(f, lambda i, g: g(x), after=lambda: stats)


@case
def module_counter_attribute():
    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return x * 2
    model = Counting()

    def f(x):
        return model(x)
    x = kiln.ones(2)
    return world(f, lambda i, g: g(x), after=lambda: model.calls)


@case
def set_add_effect():
    seen = set()

    def f(x):
        seen.add(len(seen))
        return x + 1
    x = kiln.ones(2)
    return world(f, lambda i, g: g(x), after=lambda: len(seen))


# ----------------------------------------------------------------------------- writes through views

@case
def chained_index_writes_to_a_local_tensor():
    def f(x):
        m = kiln.zeros(3, 4)
        row = m[1]                      # read after the writes below: sees them
        m[1][2] = 5
        m[0][1:3] = x[:2]
        m[:, 3].mul_(2).add_(x[3])      # a strided column
        m.t()[0].fill_(-1)
        return m * x.sum(), row + 0
    return world(f, lambda i, g: g(kiln.arange(4.0) * (i + 1)))


chained_index_writes_to_a_local_tensor.check = expect_replays(2)


@case
def writes_through_views_of_an_argument_and_a_global_buffer():
    buf = kiln.zeros(2, 3, 4)

    def f(x, out):
        out[0][1:] = x[1:4]                 # an argument, written through a view
        buf[1][2][:2] = x[4:6] * 2          # state, written through a view of a view
        buf.view(-1)[0] += 1
        return out.sum() + buf.sum()

    def call(i, g):
        out = kiln.ones(2, 4)
        return g(kiln.arange(6.0) + i, out), out
    return world(f, call, after=lambda: buf)


writes_through_views_of_an_argument_and_a_global_buffer.check = expect_replays(2)


@case
def gradient_through_writes_to_views():
    w = kiln.randn(3, 4, requires_grad=True)

    def f(x):
        h = w * x
        h[0][1] = 0
        h[1].mul_(3)
        h[:, 2][1:] = h[:, 0][1:] * 2
        loss = (h ** 2).sum()
        loss.backward()
        return loss

    def call(i, g):
        w.grad = None
        return g(kiln.full((3, 4), 1.0 + i)), w.grad
    return world(f, call)


gradient_through_writes_to_views.check = expect_replays(2)


# ----------------------------------------------------------------------------- tensors a call stores

def _pruned_net():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    nn.utils.prune.l1_unstructured(model[0], "weight", amount=0.5)
    model[2] = nn.utils.weight_norm(model[2])
    return model, kiln.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


@case
def pruned_and_weight_normed_training_step():
    # their forward pre-hooks assign `module.weight` on every call: replays write the new one
    model, opt = _pruned_net()

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    x, y = kiln.randn(10, 6), kiln.randint(0, 3, (10,))
    return world(step, lambda i, g: (g(x, y), model[0].weight, model[2].weight),
                 after=lambda: [p.detach() for p in model.parameters()])


pruned_and_weight_normed_training_step.calls = 6
pruned_and_weight_normed_training_step.check = expect_replays(4)


@case
def stored_weight_read_outside_the_compiled_forward():
    # a penalty on the stored `module.weight` backpropagates to weight_orig through the
    # compiled forward's backward, as through eager's history
    model, opt = _pruned_net()
    x, y = kiln.randn(10, 6), kiln.randint(0, 3, (10,))

    def call(i, g):
        opt.zero_grad()
        loss = F.cross_entropy(g(x), y) + 0.1 * (model[0].weight ** 2).sum() \
            + 0.1 * model[2].weight.abs().sum()
        loss.backward()
        opt.step()
        return loss
    return world(model, call, after=lambda: [p.detach() for p in model.parameters()])


stored_weight_read_outside_the_compiled_forward.calls = 5
stored_weight_read_outside_the_compiled_forward.check = expect_replays(3)


@case
def output_kept_on_the_module_and_returned():
    class Keeps(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.last = None

        def forward(self, x):
            self.last = self.fc(x).tanh()
            self.attention = self.last.softmax(-1)      # kept, not returned
            return self.last
    model = Keeps()

    def call(i, g):
        out = g(kiln.randn(2, 4) + i)
        return out, model.last is out, model.last, model.attention
    return world(model, call)


output_kept_on_the_module_and_returned.check = expect_replays(2)


@case
def running_state_read_then_replaced():
    # a running average kept by reassignment: each replay reads the tensor the last call stored
    state = types.SimpleNamespace(avg=kiln.zeros(3))

    def f(x):
        state.avg = state.avg * 0.9 + x * 0.1
        return state.avg.sum()

    def call(i, g):
        if i == 4:
            state.avg = kiln.full((3,), 5.0)        # replaced by the user between calls
        return g(kiln.ones(3) * i), state.avg
    return world(f, call, after=lambda: state.avg)


running_state_read_then_replaced.calls = 7
running_state_read_then_replaced.check = expect_replays(4)


@case
def custom_batchnorm_reassigning_its_buffers():
    class RunningNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", kiln.zeros(4))
            self.register_buffer("var", kiln.ones(4))

        def forward(self, x):
            if self.training:
                with kiln.no_grad():
                    self.mean = 0.9 * self.mean + 0.1 * x.mean(0)
                    self.var = 0.9 * self.var + 0.1 * x.var(0)
            return (x - self.mean) / (self.var + 1e-5).sqrt()
    model = nn.Sequential(nn.Linear(3, 4), RunningNorm(), nn.Linear(4, 2))
    opt = kiln.optim.SGD(model.parameters(), lr=0.05)

    def step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss
    x, y = kiln.randn(8, 3), kiln.randn(8, 2)
    return world(step, lambda i, g: (g(x, y), model[1].mean, model[1].var),
                 after=lambda: [t.detach() for t in model.state_dict().values()])


custom_batchnorm_reassigning_its_buffers.calls = 6
custom_batchnorm_reassigning_its_buffers.check = expect_replays(3)


@case
def state_replaced_and_written_in_place_stays_eager():
    state = types.SimpleNamespace(avg=kiln.zeros(3))

    def f(x):
        old = state.avg
        state.avg = old * 0.9 + x * 0.1
        old.add_(1)                     # the replaced tensor written too
        return state.avg.sum() + old.sum()
    return world(f, lambda i, g: (g(kiln.ones(3) * i), state.avg))


state_replaced_and_written_in_place_stays_eager.check = expect_eager


@case
def state_with_history_replaced_stays_an_effect():
    # the stored tensor requires grad: its history would reach into the last call's graph
    w = kiln.ones(3, requires_grad=True)
    state = types.SimpleNamespace(h=kiln.zeros(3))

    def f(x):
        state.h = (state.h + x * w).tanh()
        return state.h.sum()
    return world(f, lambda i, g: (g(kiln.ones(3) * 0.1 * i), state.h.detach()))


state_with_history_replaced_stays_an_effect.check = expect_eager


@case
def view_of_a_parameter_stored_stays_an_effect():
    # eager's stored view shares the parameter's memory (an update shows through it); a
    # replay's output would not
    model = nn.Linear(3, 2)
    state = types.SimpleNamespace(w_t=None)

    def f(x):
        state.w_t = model.weight.t()
        return x @ state.w_t

    def call(i, g):
        out = g(kiln.ones(4, 3) * i)
        with kiln.no_grad():
            model.weight.add_(1.0)
        return out, state.w_t
    return world(f, call)


view_of_a_parameter_stored_stays_an_effect.check = expect_eager


@case
def argument_stored_stays_an_effect():
    state = types.SimpleNamespace(last=None)

    def f(x):
        state.last = x
        return x * 2
    return world(f, lambda i, g: (g(kiln.ones(3) * i), state.last))


@case
def stateful_lstm_keeps_its_detached_hidden_state():
    # a stateful RNN (a time series cut into windows): the state carried to the next window is
    # stored detached on the module; each replay reads the last one stored and stores a copy
    class Stateful(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(3, 5, batch_first=True)
            self.fc = nn.Linear(5, 1)
            self.h, self.c = kiln.zeros(1, 2, 5), kiln.zeros(1, 2, 5)

        def forward(self, x):
            out, (h, c) = self.lstm(x, (self.h, self.c))
            self.h, self.c = h.detach(), c.detach()
            return self.fc(out)
    model = Stateful()
    opt = kiln.optim.SGD(model.parameters(), lr=0.1)

    def step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    def call(i, g):
        if i == 4:
            model.h.zero_()                 # the user resets the state in place between windows
        return g(kiln.randn(2, 4, 3), kiln.randn(2, 4, 1)), model.h, model.c
    return world(step, call, after=lambda: [p.detach() for p in model.parameters()])


stateful_lstm_keeps_its_detached_hidden_state.calls = 6
stateful_lstm_keeps_its_detached_hidden_state.check = expect_replays(3)


@case
def given_batch_stored_on_the_model():
    # pix2pix's `model.set_input(a, b)` inside the step keeps the batch it was given on the
    # model (was an effect, so the step ran eagerly): each replay stores its own arguments
    state = types.SimpleNamespace()
    lin = nn.Linear(3, 2)
    opt = kiln.optim.SGD(lin.parameters(), lr=0.1)

    def step(a, b):
        state.real_A, state.real_B = a, b
        state.fake_B = lin(state.real_A)
        loss = F.l1_loss(state.fake_B, state.real_B)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    def call(i, g):
        a, b = kiln.randn(4, 3), kiln.randn(4, 2)
        return g(a, b), state.real_A is a, state.real_B is b, state.fake_B
    return world(step, call, after=lambda: [p.detach() for p in lin.parameters()])


given_batch_stored_on_the_model.calls = 5
given_batch_stored_on_the_model.check = expect_replays(3)


@case
def discriminator_frozen_after_its_step_keeps_its_gradient():
    # a GAN step (pix2pix's set_requires_grad): D's gradient is written by its own backward,
    # then D is frozen for G's; replays wrote no gradient to parameters frozen at the call's
    # end, so D's .grad stayed the traced call's
    kiln.manual_seed(0)
    G, D = nn.Linear(3, 3), nn.Linear(3, 1)
    opt_g = kiln.optim.Adam(G.parameters(), lr=0.1)
    opt_d = kiln.optim.Adam(D.parameters(), lr=0.1)

    def set_requires_grad(net, flag):
        for p in net.parameters():
            p.requires_grad = flag

    def step(a):
        fake = G(a)
        set_requires_grad(D, True)
        opt_d.zero_grad()
        loss_d = (D(fake.detach()) ** 2).mean() + ((D(a) - 1) ** 2).mean()
        loss_d.backward()
        opt_d.step()
        set_requires_grad(D, False)
        opt_g.zero_grad()
        loss_g = ((D(fake) - 1) ** 2).mean()
        loss_g.backward()
        opt_g.step()
        return loss_d.detach(), loss_g.detach()

    def call(i, g):
        return g(kiln.randn(4, 3)), D.weight.grad, D.bias.grad, G.weight.grad
    return world(step, call, after=lambda: [p.detach() for p in [*G.parameters(),
                                                                  *D.parameters()]])


discriminator_frozen_after_its_step_keeps_its_gradient.calls = 5
discriminator_frozen_after_its_step_keeps_its_gradient.check = expect_replays(2)


@case
def detached_result_stored_and_returned_stays_an_effect():
    # eager's stored `h.detach()` shares memory with the returned `h`: a write to one shows in
    # the other, and a replay's stored copy would not
    state = types.SimpleNamespace(last=None)

    def f(x):
        h = (x * 2).tanh()
        state.last = h.detach()
        return h

    def call(i, g):
        out = g(kiln.ones(3) * i)
        out.add_(1.0)
        return out, state.last
    return world(f, call)


detached_result_stored_and_returned_stays_an_effect.check = expect_eager


@case
def detached_result_stored_while_a_view_of_it_is_returned_stays_an_effect():
    # the returned row is a view of `h`, whose memory the stored `h.detach()` shares eagerly
    state = types.SimpleNamespace(last=None)

    def f(x):
        h = (x * 2).tanh()
        state.last = h.detach()
        return h[0]

    def call(i, g):
        row = g(kiln.ones(2, 3) * i)
        row.add_(1.0)
        return row, state.last
    return world(f, call)


detached_result_stored_while_a_view_of_it_is_returned_stays_an_effect.check = expect_eager


@case
def detached_result_stored_beside_a_returned_view_of_another_value():
    state = types.SimpleNamespace(last=None)

    def f(x):
        h = (x * 2).tanh()
        state.last = h.detach()
        return (x + 1)[0]
    return world(f, lambda i, g: (g(kiln.ones(2, 3) * i), state.last))


detached_result_stored_beside_a_returned_view_of_another_value.check = expect_replays(2)


@case
def detached_parameter_stored_stays_an_effect():
    model = nn.Linear(3, 2)
    state = types.SimpleNamespace(w=None)

    def f(x):
        state.w = model.weight.detach()
        return model(x)

    def call(i, g):
        out = g(kiln.ones(4, 3) * i)
        with kiln.no_grad():
            model.weight.add_(1.0)
        return out, state.w
    return world(f, call)


detached_parameter_stored_stays_an_effect.check = expect_eager


# ----------------------------------------------------------------------------- returned .item()

def _item_world(body: str):
    ns = exec_world("import math\nmodel = nn.Linear(4, 2)\n"
                    "opt = kiln.optim.SGD(model.parameters(), lr=0.1)\n"
                    "def step(x, y):\n    opt.zero_grad()\n    out = model(x)\n"
                    "    loss = F.cross_entropy(out, y)\n    loss.backward()\n    opt.step()\n"
                    + body)
    x, y = kiln.randn(8, 4), kiln.randint(0, 2, (8,))
    return world(ns["step"], lambda i, g: g(x, y),
                 after=lambda: [p.detach() for p in ns["model"].parameters()])


@case
def returns_loss_item():
    # nothing in the function sees the number: a replay reads it from the program's output
    return _item_world("    return loss.item()\n")


def expect_replays_where_bytecode_is_read(n):
    """Replays on a Python whose bytecode kiln.tracer.bytecode reads; eager elsewhere."""
    from kiln.tracer import bytecode
    return expect_replays(n) if bytecode._KNOWN else expect_eager


returns_loss_item.check = expect_replays_where_bytecode_is_read(2)


@case
def returns_items_in_a_tuple_and_a_dict():
    return _item_world("    return loss.item(), {'acc': (out.argmax(1) == y).float().mean()"
                       ".item(), 'n': len(y)}\n")


returns_items_in_a_tuple_and_a_dict.check = expect_replays_where_bytecode_is_read(2)


@case
def item_kept_in_a_local_then_returned():
    return _item_world("    value = loss.item()\n    acc = (out.argmax(1) == y).float().mean()"
                       ".item()\n    return value, acc\n")


item_kept_in_a_local_then_returned.check = expect_replays_where_bytecode_is_read(2)


@case
def item_kept_in_a_local_and_used_is_a_graph_break():
    return _item_world("    value = loss.item()\n    total = value + 1.0\n    return value, "
                       "total\n")


item_kept_in_a_local_and_used_is_a_graph_break.check = expect_eager


@case
def item_used_before_return_is_a_graph_break():
    return _item_world("    return loss.item() * 2, math.isfinite(loss.item()), "
                       "{loss.item(): 1}\n")


item_used_before_return_is_a_graph_break.check = expect_eager


@case
def item_returned_to_a_recursive_caller_is_a_graph_break():
    ns = exec_world("def f(x, n):\n    if n == 0:\n        return x.sum().item()\n"
                    "    return f(x * 2, n - 1) + 1.0\n")
    return world(ns["f"], lambda i, g: g(kiln.ones(3) * i, 2))


item_returned_to_a_recursive_caller_is_a_graph_break.check = expect_eager


# ----------------------------------------------------------------------------- flags a call sets

def _batchnorm_net():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    return model, kiln.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def _model_state(model):
    return [model.training] + [m.training for m in model.modules()] + \
        [v.detach() for v in model.state_dict().values()]


@case
def train_inside_the_step_eval_between():
    # the tutorials' loop: each epoch trains (the step calls model.train()), then evaluates
    # eagerly under model.eval(); the step replays, and sets the flags back, as eager does
    model, opt = _batchnorm_net()

    def step(x, y):
        model.train()
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    x, y = kiln.randn(16, 4), kiln.randint(0, 2, (16,))

    def call(i, g):
        loss = g(x, y)
        if i % 3 == 2:
            model.eval()
            with kiln.no_grad():
                return loss, model(x), model.training
        return loss, model.training
    return world(step, call, after=lambda: _model_state(model))


train_inside_the_step_eval_between.calls = 12
train_inside_the_step_eval_between.check = expect_replays(8)


@case
def eval_inside_the_evaluation():
    model, opt = _batchnorm_net()

    def evaluate(x):
        model.eval()
        with kiln.no_grad():
            return model(x).softmax(-1)
    x, y = kiln.randn(16, 4), kiln.randint(0, 2, (16,))

    def call(i, g):
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        return g(x), model.training
    return world(evaluate, call, after=lambda: _model_state(model))


eval_inside_the_evaluation.calls = 6
eval_inside_the_evaluation.check = expect_replays(4)


@case
def module_log_growing_outside_the_step():
    # a Lightning-style module: a log and a step count on the module, changed outside the
    # compiled step, which never reads them; `scale`, which forward reads, changes once
    ns = exec_world(
        "class Lit(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.net = nn.Linear(4, 3)\n"
        "        self.logged = {'loss': []}\n"
        "        self.global_step = 0\n"
        "        self.scale = 1.0\n"
        "    def forward(self, x):\n"
        "        return self.net(x) * self.scale\n"
        "    def training_step(self, x):\n"
        "        return self(x).square().mean()\n"
        "model = Lit()\n"
        "opt = kiln.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)\n"
        "def f(x):\n"
        "    loss = model.training_step(x)\n"
        "    opt.zero_grad()\n"
        "    loss.backward()\n"
        "    opt.step()\n"
        "    return loss\n")
    x = kiln.randn(5, 4)

    def call(i, f):
        model = ns["model"]
        if i == 5:
            model.scale = 0.5
        loss = f(x)
        model.logged["loss"].append(loss.item())
        model.global_step += 1
        return loss
    return world(ns["f"], call, after=lambda: [p.detach() for p in ns["model"].parameters()])


module_log_growing_outside_the_step.calls = 8
module_log_growing_outside_the_step.check = expect_replays(5)


@case
def module_attribute_read_by_a_forward_hook():
    # a hook (the user's function, in the module's registry) reads an attribute forward does
    # not name: it stays guarded
    ns = exec_world(
        "class M(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.net = nn.Linear(4, 3)\n"
        "        self.gain = 1.0\n"
        "    def forward(self, x):\n"
        "        return self.net(x)\n"
        "def boost(module, args, out):\n"
        "    return out * module.gain\n"
        "model = M()\n"
        "model.register_forward_hook(boost)\n"
        "def f(x):\n"
        "    return model(x).sum(1)\n")
    x = kiln.randn(5, 4)

    def call(i, f):
        ns["model"].gain = [1.0, 1.0, 2.0, 2.0, -1.0][i]
        return f(x)
    return world(ns["f"], call)


module_attribute_read_by_a_forward_hook.calls = 5


@case
def module_attributes_of_a_kiln_layer_subclass_stay_guarded():
    # a user's subclass of a kiln layer (LayerNorm, whose code reads `eps`, unseen by the
    # reads) is guarded whole; the user's own module by the names its code reads
    ns = exec_world(
        "class Norm(nn.LayerNorm):\n"
        "    pass\n"
        "class M(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.norm = Norm(4)\n"
        "        self.bias_on = True\n"
        "    def forward(self, x):\n"
        "        y = self.norm(x)\n"
        "        return y + 1 if self.bias_on else y\n"
        "model = M()\n"
        "def f(x):\n"
        "    return model(x)\n")
    x = kiln.randn(3, 4)

    def call(i, f):
        model = ns["model"]
        if i == 2:
            model.norm.eps = 1.0
        if i == 3:
            model.bias_on = False
        return f(x)
    return world(ns["f"], call)


module_attributes_of_a_kiln_layer_subclass_stay_guarded.calls = 5


@case
def flag_read_then_set():
    # the value read before the assignment decides the result: each replay needs that value
    ns = exec_world("FIRST = True\ndef f(x):\n    global FIRST\n    y = x * 3 if FIRST else "
                    "x * 2\n    FIRST = False\n    return y\n")
    x = kiln.ones(3)

    def call(i, g):
        if i in (3, 5):
            ns["FIRST"] = True
        return g(x), ns["FIRST"]
    return world(ns["f"], call, after=lambda: ns["FIRST"])


flag_read_then_set.calls = 7
flag_read_then_set.check = expect_replays(4)


@case
def flag_set_in_a_closure_and_on_an_object():
    state = types.SimpleNamespace(mode="warm")
    scale = 1.0

    def f(x):
        nonlocal scale
        scale = 0.5
        state.mode = "run"
        return x * scale
    x = kiln.ones(3)

    def call(i, g):
        nonlocal scale
        if i == 2:
            scale, state.mode = 1.0, "warm"
        return g(x), scale, state.mode
    return world(f, call, after=lambda: (scale, state.mode))


flag_set_in_a_closure_and_on_an_object.calls = 5
flag_set_in_a_closure_and_on_an_object.check = expect_replays(3)


@case
def learning_rate_set_inside_the_step():
    # a number the optimizer reads on every call: the assignment stays a Python effect
    model = nn.Linear(4, 1)
    opt = kiln.optim.SGD(model.parameters(), lr=0.1)
    ns = {"lr": 0.1}

    def step(x, y):
        for group in opt.param_groups:
            group["lr"] = ns["lr"]
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss
    x, y = kiln.randn(8, 4), kiln.randn(8, 1)

    def call(i, g):
        ns["lr"] = [0.1, 0.1, 0.05, 0.05, 0.01][i]
        return g(x, y)
    return world(step, call, after=lambda: [p.detach() for p in model.parameters()])


learning_rate_set_inside_the_step.calls = 5


@case
def argument_list_appended():
    def f(x, out):
        out.append(1)
        return x * 2
    x = kiln.ones(2)
    box = []

    def call(i, g):
        return g(x, box), len(box)
    return world(f, call)


@case
def generator_function():
    def f(x):
        yield x * 2
        yield x + 1
    x = kiln.ones(2)
    return world(f, lambda i, g: list(g(x)))


@case
def lazy_attribute_initialization():
    class Lazy(nn.Module):
        def __init__(self):
            super().__init__()
            self.cache = None

        def forward(self, x):
            if self.cache is None:
                self.cache = 3.0
            return x * self.cache
    model = Lazy()

    def f(x):
        return model(x)
    x = kiln.ones(2)
    return world(f, lambda i, g: g(x))


lazy_attribute_initialization.calls = 5
lazy_attribute_initialization.check = expect_replays(2)


# ----------------------------------------------------------------------------- return values

@case
def returns_shape():
    def f(x):
        return x.shape
    return world(f, lambda i, g: g(kiln.ones(2, 3)))


@case
def returns_tensor_and_int():
    def f(x):
        return x.sum(), x.shape[0]
    return world(f, lambda i, g: g(kiln.randn(4, 2)))


@case
def returns_dict_and_none():
    def f(x):
        return {"out": x * 2, "n": 3, "none": None}
    x = kiln.randn(2)
    return world(f, lambda i, g: g(x))


@case
def returns_namedtuple():
    Pair = collections.namedtuple("Pair", "a b")

    def f(x):
        return Pair(x * 2, x + 1)
    x = kiln.randn(2)
    return world(f, lambda i, g: tuple(g(x)))


@case
def returns_new_object():
    class Result:
        def __init__(self, value):
            self.value = value

    def f(x):
        return Result(x * 2)
    return world(f, lambda i, g: g(kiln.randn(2)).value)


@case
def returns_loss_after_backward():
    model = nn.Linear(3, 1)

    def f(x):
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    def call(i, g):
        for p in model.parameters():
            p.grad = None
        loss = g(kiln.randn(4, 3))
        try:
            loss.backward()
            again = "no error"
        except RuntimeError as e:
            again = "second time" in str(e)
        return loss, again, model.weight.grad
    return world(f, call)


@case
def branches_on_which_params_have_a_grad():
    """User code, no optimizer: a gradient-norm log over the parameters that have a `.grad`.
    Which ones do changes between calls, from outside."""
    model = nn.Linear(3, 2)

    def f(x):
        total = kiln.zeros(())
        for p in model.parameters():
            if p.grad is not None:
                total = total + p.grad.pow(2).sum()
        return model(x).sum() + total

    def call(i, g):
        if i in (1, 4):
            model(kiln.ones(1, 3)).sum().backward()
        if i == 3:
            model.bias.grad = None
        return g(kiln.randn(2, 3))
    return world(f, call)


branches_on_which_params_have_a_grad.calls = 6


@case
def returns_global_float():
    ns = exec_world("SCALE = 1.5\ndef f(x):\n    return x * 2, SCALE\n")
    x = kiln.randn(2)

    def call(i, g):
        ns["SCALE"] = [1.5, 1.5, 2.5, 2.5][i]
        return g(x)
    return world(ns["f"], call)


# ----------------------------------------------------------------------------- bounds

@case
def cross_entropy_target_out_of_range():
    def f(logits, target):
        return F.cross_entropy(logits, target)
    logits = kiln.randn(4, 5)

    def call(i, g):
        target = kiln.tensor([0, 1, 4, 2]) if i < 2 else kiln.tensor([0, 5, 1, 2])
        return g(logits, target)
    return world(f, call)


@case
def gather_index_past_the_row():
    def f(x, idx):
        return x.gather(1, idx) * 2
    x = kiln.randn(3, 4)

    def call(i, g):
        idx = kiln.tensor([[0], [3], [1]]) if i < 2 else kiln.tensor([[0], [4], [1]])
        return g(x, idx)
    return world(f, call)


@case
def gather_negative_index_on_replay():
    def f(x, idx):
        return x.gather(1, idx) + 1
    x = kiln.randn(3, 4)

    def call(i, g):
        return g(x, kiln.tensor([[0], [2], [1]]) if i < 2 else kiln.tensor([[0], [-1], [1]]))
    return world(f, call)


@case
def embedding_negative_index_on_replay():
    emb = nn.Embedding(5, 3)

    def f(idx):
        return emb(idx) * 2

    def call(i, g):
        return g(kiln.tensor([0, 4]) if i < 2 else kiln.tensor([1, -1]))
    return world(f, call)


@case
def index_select_out_of_range():
    def f(x, idx):
        return x.index_select(0, idx) + 1
    x = kiln.randn(3, 2)

    def call(i, g):
        return g(x, kiln.tensor([0, 2]) if i < 2 else kiln.tensor([0, 3]))
    return world(f, call)


@case
def embedding_index_out_of_range():
    emb = nn.Embedding(5, 3)

    def f(idx):
        return emb(idx).sum(1)

    def call(i, g):
        return g(kiln.tensor([0, 4]) if i < 2 else kiln.tensor([1, 5]))
    return world(f, call)


@case
def tensor_indexing_out_of_range():
    def f(x, idx):
        return x[idx] * 3
    x = kiln.randn(4)

    def call(i, g):
        return g(x, kiln.tensor([0, 3]) if i < 2 else kiln.tensor([1, 4]))
    return world(f, call)


@case
def tensor_indexing_negative_wraps_then_out_of_range():
    def f(x, idx):
        return x[idx] * 3
    x = kiln.randn(4)

    def call(i, g):
        return g(x, kiln.tensor([-1, 2]) if i < 2 else kiln.tensor([-5, 2]))
    return world(f, call)


# ----------------------------------------------------------------------------- training steps

@case
def sgd_momentum_step_returning_loss():
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = kiln.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    x, y = kiln.randn(10, 6), kiln.randint(0, 2, (10,))
    return world(step, lambda i, g: g(x, y), after=lambda: list(model.parameters()))


sgd_momentum_step_returning_loss.calls = 6


@case
def step_with_scheduler_and_item_logging():
    model = nn.Linear(4, 2)
    opt = kiln.optim.Adam(model.parameters(), lr=0.01)
    sched = kiln.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    history = []

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    x, y = kiln.randn(6, 4), kiln.randint(0, 2, (6,))

    def call(i, g):
        loss = g(x, y)
        sched.step()
        history.append(loss.item())
        return loss
    return world(step, call, after=lambda: list(model.parameters()) + history)


step_with_scheduler_and_item_logging.calls = 6


@case
def user_exception_propagates():
    ns = exec_world("FAIL = False\ndef f(x):\n    if FAIL:\n        raise ValueError('bad')\n"
                    "    return x * 2\n")
    x = kiln.ones(2)

    def call(i, g):
        ns["FAIL"] = i == 2
        return g(x)
    return world(ns["f"], call)


# ----------------------------------------------------------------------------- batch objects

_BATCH_WORLD = """
import dataclasses

class Batch:
    def __init__(self, x, y, scale, extra=()):
        self.x, self.y, self.scale, self.extra = x, y, scale, list(extra)

Pair = dataclasses.make_dataclass("Pair", ["x", "y"])

model = nn.Linear(4, 1)
opt = kiln.optim.SGD(model.parameters(), lr=0.1)

def step(batch):
    opt.zero_grad()
    out = model(batch.x) * batch.scale
    for t in batch.extra:
        out = out + t
    loss = ((out - batch.y) ** 2).mean()
    loss.backward()
    opt.step()
    return loss

def pair_step(pair):
    opt.zero_grad()
    loss = ((model(pair.x) - pair.y) ** 2).mean()
    loss.backward()
    opt.step()
    return loss

def counting_step(batch):
    batch.seen = getattr(batch, "seen", 0) + 1
    return model(batch.x).sum() * batch.scale
"""


@case
def batch_object_fields_are_inputs():
    # a new batch object every call (torchtext-style `train_step(batch)`): its tensors are the
    # program's inputs and its numbers part of the key; a new scale retraces, a list of extra
    # tensors changes the structure
    ns = exec_world(_BATCH_WORLD, __name__="batch_world")   # a user module's classes
    data = [(kiln.randn(6, 4), kiln.randn(6, 1)) for _ in range(7)]
    scales = [1.0, 1.0, 1.0, 2.0, 2.0, 1.0, 1.0]

    def call(i, g):
        extra = [kiln.ones(6, 1)] if i == 6 else ()
        return g(ns["Batch"](*data[i], scales[i], extra))
    return world(ns["step"], call, after=lambda: list(ns["model"].parameters()))


batch_object_fields_are_inputs.calls = 7
batch_object_fields_are_inputs.check = expect_replays(3)


@case
def dataclass_argument_fields_are_inputs():
    ns = exec_world(_BATCH_WORLD, __name__="batch_world")   # a user module's classes
    data = [(kiln.randn(6, 4), kiln.randn(6, 1)) for _ in range(4)]

    def call(i, g):
        return g(ns["Pair"](*data[i]))
    return world(ns["pair_step"], call, after=lambda: list(ns["model"].parameters()))


dataclass_argument_fields_are_inputs.check = expect_replays(2)


@case
def batch_object_replaced_field_is_read():
    # the same object, a field rebound between calls: the replay reads the new tensor
    ns = exec_world(_BATCH_WORLD, __name__="batch_world")   # a user module's classes
    batch = ns["Batch"](kiln.randn(6, 4), kiln.randn(6, 1), 1.0)

    def call(i, g):
        batch.x = kiln.randn(6, 4)
        return g(batch)
    return world(ns["step"], call, after=lambda: list(ns["model"].parameters()))


batch_object_replaced_field_is_read.check = expect_replays(2)


@case
def batch_object_written_by_the_call():
    # a field the call sets on its argument: a Python effect, so the calls run eagerly
    ns = exec_world(_BATCH_WORLD, __name__="batch_world")   # a user module's classes
    batches = [ns["Batch"](kiln.randn(6, 4), kiln.randn(6, 1), 1.0) for _ in range(4)]

    def call(i, g):
        return g(batches[i if i < 2 else 0])
    return world(ns["counting_step"], call, after=lambda: [b.__dict__.get("seen")
                                                            for b in batches])


# ----------------------------------------------------------------------------- state held by classes
# A class-level setting, a slot, and the globals a method reads are places the call reads too.

def _replayed_twice(build):
    build.check = expect_replays(2)
    return case(build)


@_replayed_twice
def class_attribute_read_through_the_class():
    ns = exec_world("class Config:\n    LR = 0.5\ndef f(x):\n    return x * Config.LR\n")
    x = kiln.randn(5)

    def call(i, f):
        ns["Config"].LR = [0.5, 0.5, 2.0, 2.0][i]
        return f(x)
    return world(ns["f"], call)


@_replayed_twice
def class_attribute_read_through_an_instance():
    ns = exec_world("class Scale:\n    k = 1.0\nscale = Scale()\n"
                    "def f(x, s):\n    return x * s.k\n")
    x = kiln.randn(5)

    def call(i, f):
        ns["Scale"].k = [1.0, 1.0, -3.0, -3.0][i]
        return f(x, ns["scale"])
    return world(ns["f"], call)


@_replayed_twice
def slot_attribute():
    ns = exec_world("class Pair:\n    __slots__ = ('k', 'unused')\n"
                    "    def __init__(self):\n        self.k = 1.0\npair = Pair()\n"
                    "def f(x, p):\n    return x * p.k\n")
    x = kiln.randn(5)

    def call(i, f):
        ns["pair"].k = [1.0, 1.0, 4.0, 4.0][i]
        return f(x, ns["pair"])
    return world(ns["f"], call)


@_replayed_twice
def global_read_by_a_method():
    ns = exec_world("ALPHA = 1.0\nclass T:\n    def scale(self, x):\n        return x * ALPHA\n"
                    "t = T()\ndef f(x, t):\n    return t.scale(x) + 1\n")
    x = kiln.randn(5)

    def call(i, f):
        ns["ALPHA"] = [1.0, 1.0, 3.0, 3.0][i]
        return f(x, ns["t"])
    return world(ns["f"], call)


@_replayed_twice
def global_read_by_a_module_forward():
    ns = exec_world("BETA = 1.0\nclass M(nn.Module):\n    def __init__(self):\n"
                    "        super().__init__()\n        self.lin = nn.Linear(5, 3)\n"
                    "    def forward(self, x):\n        return self.lin(x) * BETA\n"
                    "m = M()\ndef f(x):\n    return m(x)\n")
    x = kiln.randn(2, 5)

    def call(i, f):
        ns["BETA"] = [1.0, 1.0, 5.0, 5.0][i]
        return f(x)
    return world(ns["f"], call)


@_replayed_twice
def global_read_by_a_compiled_module_forward():
    ns = exec_world("GAMMA = 1.0\nclass M(nn.Module):\n"
                    "    def forward(self, x):\n        return x.relu() * GAMMA\n")
    x = kiln.randn(2, 5)
    module = ns["M"]()

    def call(i, m):
        ns["GAMMA"] = [1.0, 1.0, 7.0, 7.0][i]
        return m(x)
    return world(module, call)


# found by tests/fuzz_guards.py: each was a stale replay

@_replayed_twice
def default_argument_mutated_then_reassigned():
    ns = exec_world("def weights(v=[1.0, 2.0]):\n    return v\n"
                    "def f(x, g):\n    return x * len(g())\n")
    x = kiln.randn(5)

    def call(i, f):
        g = ns["weights"]
        if i == 2:
            g().pop(0)
        if i == 3:
            g.__defaults__ = ([3.0, 1.0, 4.0],)
        return f(x, g)
    return world(ns["f"], call)


default_argument_mutated_then_reassigned.calls = 5


@_replayed_twice
def default_argument_of_a_helper_reassigned():
    ns = exec_world("def scale(k=2.0):\n    return k\ndef f(x):\n    return x * scale()\n")
    x = kiln.randn(5)

    def call(i, f):
        if i == 2:
            ns["scale"].__defaults__ = (-3.0,)
        return f(x)
    return world(ns["f"], call)


@_replayed_twice
def optimizer_in_a_list_argument():
    ns = exec_world("opt = kiln.optim.SGD([kiln.zeros(1, requires_grad=True)], lr=0.5)\n"
                    "def f(x, parts):\n    return x * parts[1].param_groups[0]['lr']\n")
    x = kiln.randn(5)

    def call(i, f):
        ns["opt"].param_groups[0]["lr"] = [0.5, 0.5, 2.0, 2.0][i]
        return f(x, [0, ns["opt"]])
    return world(ns["f"], call)


@_replayed_twice
def module_in_a_dict_argument_set_to_eval():
    ns = exec_world("m = nn.Identity()\n"
                    "def f(x, parts):\n    return x.tanh() if parts['m'].training else x\n")
    x = kiln.randn(5)

    def call(i, f):
        ns["m"].train(i < 2)
        return f(x, {"m": ns["m"]})
    return world(ns["f"], call)


@_replayed_twice
def class_attribute_shadowed_in_a_subclass():
    ns = exec_world("class Base:\n    k = 1.0\nclass Sub(Base):\n    pass\n"
                    "s = Sub()\ndef f(x, s):\n    return x * s.k\n")
    x = kiln.randn(5)

    def call(i, f):
        if i == 2:
            ns["Sub"].k = -2.0
        return f(x, ns["s"])
    return world(ns["f"], call)


@_replayed_twice
def property_replaced_on_the_class():
    ns = exec_world("class P:\n    @property\n    def k(self):\n        return 1.0\n"
                    "p = P()\ndef f(x):\n    return x * p.k\n")
    x = kiln.randn(5)

    def call(i, f):
        if i == 2:
            ns["P"].k = property(lambda self: 5.0)
        return f(x)
    return world(ns["f"], call)


@_replayed_twice
def class_attribute_five_holders_deep():
    ns = exec_world("class Base:\n    v = 1.0\nclass Sub(Base):\n    pass\n"
                    "class Reader:\n    def __init__(self, v):\n        self.x = v\n"
                    "    def get(self):\n        return self.x\n"
                    "class Holder:\n    def __init__(self, m):\n        self.m = m\n"
                    "state = Holder(Reader(Sub()).get)\n"
                    "def f(x):\n    return x * state.m().v\n")
    x = kiln.randn(5)

    def call(i, f):
        if i == 2:
            ns["Base"].v = 4.0
        return f(x)
    return world(ns["f"], call)


@_replayed_twice
def partial_argument_mutated_in_place():
    ns = exec_world("def pick(v):\n    return v\nm = nn.Identity()\n"
                    "import functools\nheld = functools.partial(pick, m)\n"
                    "def f(x):\n    return x.tanh() if held().training else x\n")
    x = kiln.randn(5)

    def call(i, f):
        ns["m"].train(i < 2)
        return f(x)
    return world(ns["f"], call)


@_replayed_twice
def global_of_a_method_of_a_class_attribute_deep_down():
    ns = exec_world("HELD = 1.0\nclass Static:\n    @staticmethod\n    def get():\n"
                    "        return HELD\nclass Data:\n    def __init__(self, v):\n"
                    "        self.v = v\nclass Config:\n    v = Data(Static())\n"
                    "    @classmethod\n    def get(cls):\n        return cls.v\n"
                    "state = Config()\ndef read():\n    return state.get().v.get()\n"
                    "def f(x):\n    return x * read()\n")
    x = kiln.randn(5)

    def call(i, f):
        ns["HELD"] = [1.0, 1.0, -2.0, -2.0][i]
        return f(x)
    return world(ns["f"], call)


_HOLDERS = ("class Reader:\n    def __init__(self, v):\n        self.x = v\n"
            "    def get(self):\n        return self.x\n"
            "class Holder:\n    def __init__(self, m):\n        self.m = m\n")


@_replayed_twice
def optimizer_learning_rate_deep_down():
    ns = exec_world(_HOLDERS + "class Config:\n    v = Holder(Reader(kiln.optim.SGD("
                    "[kiln.zeros(1, requires_grad=True)], lr=0.5)).get)\n"
                    "def f(x):\n    return x * Config.v.m().param_groups[0]['lr']\n")
    x = kiln.randn(5)

    def call(i, f):
        ns["Config"].v.m().param_groups[0]["lr"] = [0.5, 0.5, 2.0, 2.0][i]
        return f(x)
    return world(ns["f"], call)


@_replayed_twice
def method_replaced_on_a_class_deep_down():
    ns = exec_world(_HOLDERS + "class Mode:\n    def get(self):\n        return 1.0\n"
                    "class Config:\n    v = Holder(Reader(Mode()).get)\n"
                    "    def get(self):\n        return type(self).v\n"
                    "config = Config()\n"
                    "def f(x, c):\n    return x * c.get().m().get()\n")
    x = kiln.randn(5)

    def call(i, f):
        if i == 2:
            ns["Mode"].get = lambda self: -3.0
        return f(x, ns["config"])
    return world(ns["f"], call)


@_replayed_twice
def list_behind_two_bound_methods_grows():
    ns = exec_world(_HOLDERS + "weights = [1.0, 2.0]\n"
                    "state = Holder(Reader(Holder(Reader(weights).get)).get)\n"
                    "def f(x):\n    return x * len(state.m().m())\n")
    x = kiln.randn(5)

    def call(i, f):
        if i == 2:
            ns["weights"].append(3.0)
        return f(x)
    return world(ns["f"], call)


@case
def class_counter_bumped_by_the_call():
    ns = exec_world("class Counter:\n    calls = 0\n"
                    "def f(x):\n    Counter.calls += 1\n    return x * Counter.calls\n")
    x = kiln.randn(5)
    return world(ns["f"], lambda i, f: f(x), after=lambda: ns["Counter"].calls)


# ----------------------------------------------------------------------------- past the old limits
# (the walk stopped 8 levels down and after 1024 items of a container, silently)

@_replayed_twice
def scalar_ten_lists_deep():
    ns = exec_world("DEEP = [[[[[[[[[[1.5]]]]]]]]]]\n"
                    "def f(x):\n    return x * DEEP[0][0][0][0][0][0][0][0][0][0]\n")
    x = kiln.randn(5)

    def call(i, f):
        if i == 2:
            ns["DEEP"][0][0][0][0][0][0][0][0][0][0] = -4.0
        return f(x)
    return world(ns["f"], call)


@_replayed_twice
def scalar_ten_objects_deep():
    ns = exec_world("class Box:\n    def __init__(self, v):\n        self.v = v\n"
                    "OBJ = 2.0\nfor _ in range(10):\n    OBJ = Box(OBJ)\n"
                    "def f(x):\n    return x * OBJ.v.v.v.v.v.v.v.v.v.v\n")
    x = kiln.randn(5)

    def call(i, f):
        if i == 2:
            ns["OBJ"].v.v.v.v.v.v.v.v.v.v = -4.0
        return f(x)
    return world(ns["f"], call)


@_replayed_twice
def item_1500_of_a_global_list_of_2000_floats():
    ns = exec_world("LONG = [float(i) for i in range(2000)]\n"
                    "def f(x):\n    return x * LONG[1500], kiln.tensor(LONG[1500])\n")
    x = kiln.randn(5)

    def call(i, f):
        # a new value, then the same as an int (a tensor of it is int64), then an equal float
        # that is another object (still replays)
        ns["LONG"][1500] = {2: -4.0, 3: -4, 4: float("-4.0"), 5: float("-4.0")}.get(i, 1500.0)
        return f(x)
    return world(ns["f"], call)


item_1500_of_a_global_list_of_2000_floats.calls = 6


@_replayed_twice
def a_pair_in_a_long_list_of_tensor_and_weight_pairs_replaced():
    ns = exec_world("DATA = [(kiln.full((5,), float(i)), i * 0.5) for i in range(20)]\n"
                    "def f(x):\n    t, w = DATA[15]\n    return x * w + t\n")
    x = kiln.randn(5)

    def call(i, f):
        if i == 2:
            ns["DATA"][15] = (ns["DATA"][15][0], -1.0)
        if i == 3:
            ns["DATA"][15][0].mul_(2.0)     # the tensor, updated in place: read afresh
        return f(x)
    return world(ns["f"], call)


@_replayed_twice
def an_attribute_of_a_float_subclass_in_a_long_list():
    ns = exec_world("class Tagged(float):\n    pass\n"
                    "VALUES = [Tagged(i) for i in range(12)]\nVALUES[7].scale = 2.0\n"
                    "def f(x):\n    return x * VALUES[7].scale\n")
    x = kiln.randn(5)

    def call(i, f):
        if i == 2:
            ns["VALUES"][7].scale = -1.0
        return f(x)
    return world(ns["f"], call)


@case
def a_member_of_a_set_swapped_for_another():
    ns = exec_world("S = {1.0, 2.0}\ndef f(x):\n    return x * 2.0 if 3.0 in S else x\n")
    x = kiln.randn(5)

    def call(i, f):
        if i == 2:
            ns["S"].discard(1.0)
            ns["S"].add(3.0)
        return f(x)
    return world(ns["f"], call)


@case
def batch_with_a_growing_history_and_a_scale_it_reads():
    ns = exec_world("class Batch:\n    def __init__(self, x):\n        self.x = x\n"
                    "        self.step = 0\n        self.history = []\n        self.scale = 2.0\n"
                    "    def scaled(self):\n        return self.x * self.scale\n"
                    "def f(b):\n    return b.scaled() + 1\n")
    b = ns["Batch"](kiln.randn(5))

    def call(i, f):
        b.step, b.scale = i, [2.0, 2.0, 2.0, -1.0, -1.0, 2][i]
        b.history.append(float(i))
        return f(b)
    return world(ns["f"], call)


batch_with_a_growing_history_and_a_scale_it_reads.calls = 6
batch_with_a_growing_history_and_a_scale_it_reads.check = expect_replays(3)


@case
def a_global_read_by_a_base_init_reached_through_super():
    ns = exec_world("SCALE = 2.0\nclass Base:\n    def __init__(self):\n"
                    "        self.v = SCALE\nclass Sub(Base):\n    def __init__(self):\n"
                    "        super().__init__()\n"
                    "def f(x):\n    return x * Sub().v\n")
    x = kiln.randn(5)

    def call(i, f):
        ns["SCALE"] = [2.0, 2.0, -1.0, -1.0][i]
        return f(x)
    return world(ns["f"], call)


a_global_read_by_a_base_init_reached_through_super.check = expect_replays(2)


# ----------------------------------------------------------------------------- state the call does not read
# (found needless by tests/fuzz_guards.py sweeps) A change there replays; a change to what the
# call reads traces again. Each `changes` is per call: `expect_traces` counts the traces.

def expect_traces(n):
    def check(fn):
        kinds = [(e.calls, e.eager_reason) for e in fn.entries.values()]
        assert len(fn.entries) == n and all(e.program is not None
                                            for e in fn.entries.values()), kinds
    return check


def _changes_between_calls(source: str, changes: list, traces: int, args=lambda ns: ()):
    """A case: the world `source` (its `f(x, ...)`), `changes[i]` run in it before call i."""
    def build():
        ns = exec_world(source)
        x = kiln.randn(5)

        def call(i, f):
            exec(changes[i], ns)
            return f(x, *args(ns))
        return world(ns["f"], call)
    build.calls = len(changes)
    build.check = expect_traces(traces)
    return build


CASES["unset_slot_set_between_calls"] = _changes_between_calls(
    "class Pair:\n    __slots__ = ('k', 'unused')\n    def __init__(self):\n"
    "        self.k = 1.0\npair = Pair()\ndef f(x):\n    return x * pair.k\n",
    ["", "pair.unused = 5", "pair.k = 3.0", "pair.unused = 6; del pair.unused"], traces=2)
CASES["unset_slot_the_call_reads_then_set"] = _changes_between_calls(
    "class Pair:\n    __slots__ = ('k', 'extra')\n    def __init__(self):\n"
    "        self.k = 1.0\npair = Pair()\ndef f(x):\n    try:\n"
    "        return x * pair.extra\n    except AttributeError:\n        return x * pair.k\n",
    ["", "", "pair.extra = 4.0", "", "del pair.extra"], traces=2)
CASES["namespace_attribute_the_call_does_not_read"] = _changes_between_calls(
    "import types\ncfg = types.SimpleNamespace(scale=2.0, note=0)\n"
    "def f(x, c):\n    return x * c.scale\n",
    ["", "cfg.note = 1", "cfg.scale = 3.0", "cfg.note = 2; cfg.extra = []"], traces=2,
    args=lambda ns: (ns["cfg"],))
# a namespace compared (`==` reads every attribute) is read whole
CASES["namespace_compared_is_read_whole"] = _changes_between_calls(
    "import types\ncfg = types.SimpleNamespace(scale=2.0, note=0)\n"
    "REF = types.SimpleNamespace(scale=2.0, note=0)\n"
    "def f(x):\n    return x * cfg.scale if cfg == REF else x - 1\n",
    ["", "", "cfg.note = 1", "", "cfg.note = 0"], traces=2)
CASES["namespace_formatted_is_read_whole"] = _changes_between_calls(
    "import types\ncfg = types.SimpleNamespace(scale=2.0, note=0)\n"
    "def f(x):\n    return x * cfg.scale if 'note=0' in f'{cfg}' else x - 1\n",
    ["", "", "cfg.note = 1", ""], traces=2)

# a Module's `training` is guarded where the traced call read it (kiln.compiler.note_flag_read)
CASES["eval_on_a_module_the_call_reads_an_attribute_of"] = _changes_between_calls(
    "class Holder(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
    "        self.scale = 2.0\n        self.sub = nn.Identity()\nm = Holder()\n"
    "def f(x):\n    return x * m.scale\n",
    ["", "m.eval()", "m.train()", "m.scale = 3.0", "m.sub.eval()", "m.eval()"], traces=2)
CASES["eval_on_a_module_whose_forward_reads_the_flag"] = _changes_between_calls(
    "class Block(nn.Module):\n    def forward(self, x):\n"
    "        return x.tanh() if self.training else x.relu()\nblk = nn.Sequential(Block())\n"
    "def f(x):\n    return blk(x) + 1\n",
    ["", "", "blk.eval()", "", "blk.train()", "blk[0].eval()"], traces=2)
CASES["eval_on_a_library_layer_that_reads_the_flag"] = _changes_between_calls(
    "bn = nn.BatchNorm1d(1)\ndef f(x):\n    return bn(x.reshape(5, 1)) * 2\n",
    ["", "", "bn.eval()", "", "bn.train()", "bn.eval()"], traces=2)
# ... and an optimizer's `state` where the traced call read it (kiln.compiler.note_state_read):
# an L-BFGS closure calls only `zero_grad()`, while each L-BFGS step outside it changes the
# state's counters (every step traced again, and past the limit the closure ran eagerly)
_STATE = ("lin = nn.Linear(5, 1)\nopt = kiln.optim.SGD(lin.parameters(), lr=0.1)\n"
          "opt.state[lin.weight]['count'] = 0\n")
CASES["optimizer_state_the_call_never_reads"] = _changes_between_calls(
    _STATE + "def f(x):\n    opt.zero_grad()\n    return lin(x) * 2\n",
    ["", "", "opt.state[lin.weight]['count'] += 1", "opt.state[lin.bias]['k'] = 1.0",
     "opt.state = {}", "lin.weight.grad = kiln.ones(1, 5)"], traces=1)
CASES["optimizer_state_the_call_reads"] = _changes_between_calls(
    _STATE + "def f(x):\n    opt.zero_grad()\n    return lin(x) * opt.state[lin.weight]['count']\n",
    ["", "", "opt.state[lin.weight]['count'] = 2", "", "opt.state[lin.weight]['count'] = 0",
     "opt.state = {lin.weight: {'count': 3}}"], traces=3)

# a batch object's fields the call reads are its key: a new batch holding the first value
# replays the first trace, though the batch traced then was changed since
_BATCH = ("class Batch:\n    def __init__(self, x, scale):\n        self.x = x\n"
          "        self.scale = scale\n        self.history = []\n"
          "B = Batch(kiln.ones(5), 2.0)\n")
CASES["a_new_batch_with_the_first_batchs_old_value"] = _changes_between_calls(
    _BATCH + "def f(x, b):\n    return x * b.x * b.scale\n",
    ["", "B.scale = 3.0", "B = Batch(kiln.ones(5), 2.0)", "B = Batch(kiln.ones(5), 3.0)",
     "B.history.append(1)", "B.scale = -1.0"], traces=3, args=lambda ns: (ns["B"],))
# ... unless that batch is also read another way (here a global): its fields are guarded there
CASES["a_batch_also_read_through_a_global"] = _changes_between_calls(
    _BATCH + "FIRST = B\ndef f(x, b):\n    return x * b.scale + FIRST.scale\n",
    ["", "B.scale = 3.0", "B = Batch(kiln.ones(5), 2.0)", "", "FIRST.scale = 2.0"],
    traces=3, args=lambda ns: (ns["B"],))


# a tensor's own attributes (`p.scale`, `p.no_decay`) are walked as a plain object's are
_TAGGED = ("lin = nn.Linear(5, 5)\nlin.weight.scale = 2.0\n"
           "def f(x):\n    y = lin(x) * lin.weight.scale\n"
           "    return -y if getattr(lin.bias, 'no_decay', False) else y\n")
# (deleting the attribute again replays the second trace; any attribute added traces again)
CASES["a_parameter_attribute_read_into_python"] = _changes_between_calls(
    _TAGGED, ["", "", "lin.weight.scale = 3.0", "", "lin.bias.no_decay = True", "",
              "del lin.bias.no_decay", "lin.weight.other = 1", ""], traces=4)
CASES["a_parameter_attribute_holding_a_dict"] = _changes_between_calls(
    "w = nn.Parameter(kiln.ones(5))\nw.meta = {'k': 2.0}\n"
    "def f(x):\n    return x * w * w.meta['k']\n",
    ["", "", "w.meta['k'] = 4.0", "", "w.meta = {'k': 5.0}", ""], traces=3)
CASES["a_parameter_attribute_holding_a_tensor"] = _changes_between_calls(
    "w = nn.Parameter(kiln.ones(5))\nw.mask = kiln.ones(5)\n"
    "def f(x):\n    return x * w * w.mask\n",
    ["", "", "w.mask = kiln.zeros(5)", "", "w.mask.fill_(3.0)"], traces=2)
# tensors in a long list or a tuple of tensors (guarded whole, by one check) still have their
# attributes walked
CASES["attributes_of_tensors_in_a_long_list_and_a_tuple"] = _changes_between_calls(
    "ps = [nn.Parameter(kiln.ones(5)) for _ in range(10)]\nTP = (kiln.ones(5), kiln.ones(5))\n"
    "for p in ps:\n    p.scale = 1.0\nTP[1].scale = 2.0\n"
    "def f(x):\n    return sum(x * p * p.scale for p in ps) + x * TP[1] * TP[1].scale\n",
    ["", "", "ps[3].scale = 5.0", "", "TP[1].scale = 3.0", ""], traces=3)
# an argument tensor's own attributes are part of the key (a new tensor is passed each call)
CASES["an_argument_tensors_attribute"] = _changes_between_calls(
    "def f(x, t):\n    return x * t * t.scale if getattr(t, 'on', True) else x\n"
    "T = kiln.ones(5)\nT.scale = 2.0\nM = {'k': 1.0}\n",
    ["", "", "T.scale = 3.0", "T = kiln.ones(5); T.scale = 3.0", "T.on = False",
     "T = kiln.ones(5); T.scale = 2.0"], traces=3, args=lambda ns: (ns["T"],))
CASES["an_argument_tensors_attribute_holding_a_dict"] = _changes_between_calls(
    "def f(x, t):\n    return x * t * t.meta['k']\n"
    "T = kiln.ones(5)\nT.meta = {'k': 2.0}\n",
    ["", "", "T.meta['k'] = 3.0", ""], traces=2, args=lambda ns: (ns["T"],))


@case
def a_counter_on_a_parameter_set_by_the_call():
    """A number the call keeps on a parameter (`p.steps`, made on the first call): each call
    changes it, an effect a replay would skip, so the call runs eagerly."""
    lin = nn.Linear(5, 5)

    def f(x):
        lin.weight.steps = getattr(lin.weight, "steps", 0) + 1
        return lin(x) * lin.weight.steps
    x = kiln.randn(5)
    return world(f, lambda i, g: g(x), after=lambda: lin.weight.steps)


a_counter_on_a_parameter_set_by_the_call.calls = 5


@case
def momentum_kept_on_the_parameter():
    """A hand-written optimizer step as tutorials write it: `p.momentum_buffer` made on the
    first call, then updated in place; traced again once it exists, then replayed."""
    lin = nn.Linear(5, 3)

    def f(x):
        loss = lin(x).square().mean()
        loss.backward()
        with kiln.no_grad():
            for p in lin.parameters():
                if not hasattr(p, "momentum_buffer"):
                    p.momentum_buffer = p.grad.clone()
                else:
                    p.momentum_buffer.mul_(0.9).add_(p.grad)
                p.sub_(0.1 * p.momentum_buffer)
                p.grad = None
        return loss
    x = kiln.randn(4, 5)
    return world(f, lambda i, g: g(x), after=lambda: [
        (p.detach(), p.momentum_buffer) for p in lin.parameters()])


momentum_kept_on_the_parameter.calls = 6
momentum_kept_on_the_parameter.check = expect_replays(3)


# ----------------------------------------------------------------------------- the test

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_compiled_equals_eager_as_the_world_changes(name, backend):
    build = CASES[name]
    calls = getattr(build, "calls", 4)
    eager, eager_after, _ = run_world(build, False, backend, calls)
    compiled, compiled_after, fn = run_world(build, True, backend, calls)
    for i, (e, c) in enumerate(zip(eager, compiled)):
        same(e, c, f"call {i}")
    same(eager_after, compiled_after, "state after the calls")
    check = getattr(build, "check", None)
    if check is not None:
        check(fn)


_LABEL_SMOOTHING = 0.0


def test_a_replay_bounds_error_names_the_op_and_the_users_line():
    """An index that goes out of range on the first replay raises as eager does: the op, the
    bad value, and the line of this file that indexed (traced with the check), not kiln's."""
    def gather_rows(x, idx):
        y = x * 2
        return y[idx] + 1                                   # the line the error names
    line = gather_rows.__code__.co_firstlineno + 2
    compiled = kiln.compile(gather_rows, fullgraph=True)
    x = kiln.arange(5.0)
    compiled(x, kiln.tensor([1, 2]))
    with pytest.raises(IndexError) as err:
        compiled(x, kiln.tensor([1, 7]))
    with pytest.raises(IndexError) as eager_err:
        gather_rows(x, kiln.tensor([1, 7]))
    message = str(err.value)
    assert message.startswith("index: index 7 is out of bounds")
    assert message.endswith(f"(at {__file__}:{line})")
    assert str(eager_err.value).endswith(f"(at {__file__}:{line})")
    (entry,) = compiled.entries.values()
    assert entry.program is not None                            # it stays compiled
    assert compiled(x, kiln.tensor([4, 0])).tolist() == [9.0, 1.0]


def test_a_replay_checks_the_entry_that_held_last_first():
    # a training step traced once (its zero_grad makes the grads' state at the call
    # irrelevant), then again when a global it reads changes; every later call must not pay
    # for checking the stale first entry
    global _LABEL_SMOOTHING
    model = nn.Linear(4, 2)
    opt = kiln.optim.Adam(model.parameters(), lr=0.01)

    def step(x, y):
        loss = F.cross_entropy(model(x), y, label_smoothing=_LABEL_SMOOTHING)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    compiled = kiln.compile(step)
    x, y = kiln.randn(6, 4), kiln.randint(0, 2, (6,))
    for _ in range(3):
        compiled(x, y)
    assert len(compiled.entries) == 1
    _LABEL_SMOOTHING = 0.1
    try:
        compiled(x, y)                  # traces the second entry
        compiled(x, y)                  # the first no longer holds; the second does
    except BaseException:
        _LABEL_SMOOTHING = 0.0
        raise
    assert len(compiled.entries) == 2
    checked = []
    for full, entry in compiled.entries.items():
        valid = entry.valid
        entry.valid = lambda leaves, valid=valid, full=full: checked.append(full) or \
            valid(leaves)
    try:
        for _ in range(3):
            compiled(x, y)
    finally:
        _LABEL_SMOOTHING = 0.0
    assert len(checked) == 3 and len(set(checked)) == 1, checked


def test_a_step_that_sets_training_compiles_and_says_it_sets_the_flags_again(capsys):
    model, opt = _batchnorm_net()

    def step(net, x, y):            # the model reached twice: as a global and as an argument
        net.train()
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    x, y = kiln.randn(16, 4), kiln.randint(0, 2, (16,))
    step(model, x, y)                           # the momentum buffers exist
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no "runs eagerly" warning
        out = kiln.compiler.explain(step, model, x, y)
    assert out.graph_break_count == 0 and out.artifacts[0] is not None
    assert "model.training = True" in str(out) or "argument 0.training = True" in str(out)
    assert "_modules['1'].training = True" in str(out)
    assert "training == False (bool)" in str(out)       # the replay needs what the trace found
    compiled = kiln.compile(step)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(6):
            model.eval()
            compiled(model, x, y)
            assert model.training and all(m.training for m in model.modules())
    assert replays(compiled) >= 4


def test_the_usual_step_traces_once_whatever_the_grads_were():
    """forward, zero_grad, backward, step (DESIGN.md's user view): the zero_grad() clears the
    gradients before anything reads them, so how `.grad` stood at the call does not matter:
    one entry, equal to eager also when gradients were left there from outside."""
    def make():
        kiln.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        opt = kiln.optim.Adam(model.parameters(), lr=0.05)

        def step(x, y):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss
        return model, step
    (m1, eager), (m2, step) = make(), make()
    compiled = kiln.compile(step)
    x, y = kiln.randn(6, 4), kiln.randint(0, 2, (6,))
    for i in range(4):
        if i == 2:                      # stray gradients from outside before a call
            for m in (m1, m2):
                m(x).sum().backward()
        np.testing.assert_allclose(compiled(x, y).item(), eager(x, y).item(), rtol=1e-6)
    assert len(compiled.entries) == 1
    for a, b in zip(m1.parameters(), m2.parameters()):
        np.testing.assert_allclose(b.detach().numpy(), a.detach().numpy(), rtol=1e-5,
                                   atol=1e-7)


# ----------------------------------------------------------------------------- what a call reads
# A plain object of the user's is guarded only in the attributes the code the call can run
# names (kiln.compiler.guards.code_reads): state that changes outside the compiled function and
# that it never reads does not retrace, state it reads does, and a value read by computed name
# keeps the whole object guarded.

def _graphs_traced(run) -> int:
    from kiln.compiler.counters import counters
    before = counters["stats"]["unique_graphs"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        run()
    assert not [w for w in seen if "recompile limit" in str(w.message)], \
        [str(w.message) for w in seen]
    return counters["stats"]["unique_graphs"] - before


class _Trainer:
    def __init__(self):
        self.model = nn.Linear(4, 2)
        self.opt = kiln.optim.SGD(self.model.parameters(), lr=0.1)
        self.history = []          # grows every step, outside the compiled function
        self.epochs_run = 0        # changes every epoch


def _trainer_step(tr, x, y):
    tr.opt.zero_grad()
    loss = ((tr.model(x) - y) ** 2).mean()
    loss.backward()
    tr.opt.step()
    return loss


def test_a_trainer_whose_history_grows_outside_the_step_traces_once():
    import torch
    kiln.manual_seed(0)
    xs, ys = kiln.randn(12, 8, 4), kiln.randn(12, 8, 2)

    def train(compiled: bool) -> tuple[list, _Trainer]:
        kiln.manual_seed(1)
        t = _Trainer()
        step = kiln.compile(_trainer_step) if compiled else _trainer_step
        for i in range(12):
            t.history.append(step(t, xs[i], ys[i]).item())
            t.epochs_run = i // 4
        return t.history, t
    eager, t_eager = train(False)
    done = {}
    assert _graphs_traced(lambda: done.update(run=train(True))) == 1
    compiled, t_compiled = done["run"]
    np.testing.assert_allclose(compiled, eager, rtol=1e-6)
    for a, b in zip(t_compiled.model.parameters(), t_eager.model.parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-6)
    # and eager kiln is torch's SGD on the same weights
    kiln.manual_seed(1)
    model = _Trainer().model
    ref = torch.nn.Linear(4, 2)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(model.weight.detach().numpy()))
        ref.bias.copy_(torch.tensor(model.bias.detach().numpy()))
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for i in range(12):
        opt.zero_grad()
        loss = ((ref(torch.tensor(xs[i].numpy())) - torch.tensor(ys[i].numpy())) ** 2).mean()
        loss.backward()
        opt.step()
        np.testing.assert_allclose(eager[i], loss.item(), rtol=1e-5)


class _TutorialTrainer:
    """The DDP tutorial's Trainer: its bound `_run_batch` compiled, `epochs_run` set each
    epoch by `train`, a method the compiled step never calls."""

    def __init__(self, model, train_data, optimizer, compiled: bool):
        self.model, self.train_data, self.optimizer = model, train_data, optimizer
        self.epochs_run = 0
        self.losses = []
        if compiled:
            self._run_batch = kiln.compile(self._run_batch)

    def _run_batch(self, source, targets):
        self.optimizer.zero_grad()
        loss = F.cross_entropy(self.model(source), targets)
        loss.backward()
        self.optimizer.step()
        return loss

    def _run_epoch(self, epoch):
        for source, targets in self.train_data:
            self.losses.append(self._run_batch(source, targets).item())

    def train(self, max_epochs):
        for epoch in range(self.epochs_run, max_epochs):
            self._run_epoch(epoch)
            self.epochs_run = epoch + 1


def test_the_tutorial_trainer_with_a_compiled_bound_method_traces_once():
    kiln.manual_seed(0)
    data = [(kiln.randn(8, 4), kiln.randint(0, 3, (8,))) for _ in range(3)]

    def train(compiled: bool) -> _TutorialTrainer:
        kiln.manual_seed(1)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        t = _TutorialTrainer(model, data, kiln.optim.Adam(model.parameters(), lr=0.01),
                             compiled)
        t.train(4)
        return t
    eager = train(False)
    done = {}
    assert _graphs_traced(lambda: done.update(t=train(True))) == 1
    assert done["t"].epochs_run == 4 and len(done["t"].losses) == 12
    np.testing.assert_allclose(done["t"].losses, eager.losses, rtol=1e-6)


# the same object read four ways; each function reads one thing, and `history`, which none
# reads, grows between calls
class _Reader:
    def __init__(self):
        self.scale = 2.0
        self.k = 3.0
        self._shift = 1.0
        self.off = 0.5
        self.history = []

    def factor(self):
        return self.k * 2

    @property
    def shift(self):
        return self._shift


def _read_off(r):
    return r.off


@kiln.no_grad()
def _read_off_without_grad(r, x):
    return x * r.off


def _reader_cases(helpers) -> dict:
    """name -> (compiled function of (reader, x), the attribute a change of which it reads)."""
    return {
        "attribute": (lambda r, x: x * r.scale, "scale"),
        "method": (lambda r, x: x * r.factor(), "k"),
        "property": (lambda r, x: x + r.shift, "_shift"),
        "helper in another module": (lambda r, x: x - helpers.offset(r), "off"),
        "module-level helper": (lambda r, x: x - _read_off(r), "off"),
        "decorated helper": (lambda r, x: _read_off_without_grad(r, x), "off"),
        "format string": (lambda r, x: x * float("{0.scale}".format(r)), "scale"),
    }


@pytest.mark.parametrize("name", ["attribute", "method", "property",
                                  "helper in another module", "module-level helper",
                                  "decorated helper", "format string"])
def test_a_value_the_call_reads_retraces_when_it_changes(name, tmp_path, monkeypatch):
    import importlib
    (tmp_path / "guard_reads_helpers.py").write_text("def offset(r):\n    return r.off\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    helpers = importlib.import_module("guard_reads_helpers")
    fn, attr = _reader_cases(helpers)[name]
    x = kiln.randn(5)
    values = [1.5, 1.5, -4.0, -4.0, 0.25, 0.25]

    def run(f) -> list:
        r, out = _Reader(), []
        for v in values:
            setattr(r, attr, v)
            out.append(f(r, x).numpy().copy())
            r.history.append(len(r.history))        # read by nothing: no retrace
        return out
    eager = run(fn)
    done = {}
    assert _graphs_traced(lambda: done.update(out=run(kiln.compile(fn)))) == 3
    for got, want in zip(done["out"], eager):
        np.testing.assert_allclose(got, want, rtol=1e-6)


class _Other:
    def __init__(self):
        self.k = 2.0

    def scaled(self, x):
        return x * self.k


def test_a_bound_method_stored_on_an_object_is_read_through():
    other, r = _Other(), _Reader()
    r.callback = other.scaled

    def f(x):
        return r.callback(x) + 1
    compiled, x = kiln.compile(f), kiln.randn(4)
    outs = []
    for k in [2.0, 2.0, 5.0, 5.0]:
        other.k = k
        r.history.append(k)
        outs.append((compiled(x).numpy(), f(x).numpy()))
    assert len(compiled.entries) == 2
    for got, want in outs:
        np.testing.assert_allclose(got, want, rtol=1e-6)


_ATTRIBUTE = "scale"


class _Forwarding:
    """Attributes it does not hold are looked up in `defaults`: what a call reads of it is not
    known by name."""

    def __init__(self):
        self.defaults = {"scale": 2.0}
        self.history = []

    def __getattr__(self, name):
        if name in self.defaults:
            return self.defaults[name]
        raise AttributeError(name)


@pytest.mark.parametrize("how", ["getattr with a name in a variable", "__getattr__"])
def test_reading_by_computed_name_guards_the_whole_object(how):
    if how == "__getattr__":
        r = _Forwarding()
        fn = lambda obj, x: x * obj.scale               # noqa: E731
        change = lambda v: r.defaults.__setitem__("scale", v)   # noqa: E731
    else:
        r = _Reader()
        fn = lambda obj, x: x * getattr(obj, _ATTRIBUTE)   # noqa: E731
        change = lambda v: setattr(r, "scale", v)   # noqa: E731
    compiled, x = kiln.compile(fn), kiln.randn(4)
    for i, v in enumerate([2.0, 2.0, -1.0, -1.0]):
        change(v)
        np.testing.assert_allclose(compiled(r, x).numpy(), fn(r, x).numpy(), rtol=1e-6)
    assert len(compiled.entries) == 2
    sources = {g.source for entry in compiled.guards() for g in entry}
    assert "argument 0.history" in sources          # walked whole
    r.history.append(1.0)                           # so a change of anything retraces
    np.testing.assert_allclose(compiled(r, x).numpy(), fn(r, x).numpy(), rtol=1e-6)
    assert len(compiled.entries) == 3


def test_a_step_appending_to_the_history_itself_keeps_the_effect():
    def step(tr, x, y):
        loss = _trainer_step(tr, x, y)
        tr.history.append(len(tr.history))
        return loss

    def train(f) -> _Trainer:
        kiln.manual_seed(1)
        t = _Trainer()
        for i in range(5):
            t.epochs_run = i
            t.losses = getattr(t, "losses", []) + [f(t, x, y).item()]
        return t
    x, y = kiln.randn(8, 4), kiln.randn(8, 2)
    eager = train(step)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = train(kiln.compile(step))
    assert compiled.history == eager.history == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(compiled.losses, eager.losses, rtol=1e-6)


class _ScheduledTrainer(_Trainer):
    def __init__(self):
        super().__init__()
        # the scheduler, a library object, holds user code that reads `epochs_run`
        self.sched = kiln.optim.lr_scheduler.LambdaLR(self.opt, lambda e: 0.5 ** self.epochs_run)


def test_user_code_held_by_a_library_object_is_read_through():
    def step(tr, x, y):
        loss = _trainer_step(tr, x, y)
        tr.sched.step()
        return loss

    def train(f) -> list:
        kiln.manual_seed(1)
        t, losses = _ScheduledTrainer(), []
        for i in range(8):
            t.epochs_run = i // 3
            losses.append(f(t, x, y).item())
        return losses
    x, y = kiln.randn(8, 4), kiln.randn(8, 2)
    eager = train(step)
    done = {}
    assert _graphs_traced(lambda: done.update(losses=train(kiln.compile(step)))) == 3
    np.testing.assert_allclose(done["losses"], eager, rtol=1e-6)


def test_a_method_hidden_by_an_attribute_set_on_the_object_retraces():
    r, x = _Reader(), kiln.randn(4)

    def f(obj, v):
        return v * obj.factor()
    compiled = kiln.compile(f)
    np.testing.assert_allclose(compiled(r, x).numpy(), f(r, x).numpy(), rtol=1e-6)
    r.factor = lambda: -0.5             # the object's own attribute now hides the method
    np.testing.assert_allclose(compiled(r, x).numpy(), f(r, x).numpy(), rtol=1e-6)
    assert len(compiled.entries) == 2


def _compile_warnings(f, *args) -> list:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        f(*args)
    return [str(w.message) for w in seen]


def test_a_place_past_the_depth_limit_is_said_and_listed_with_the_guards():
    from kiln.compiler import guards
    from kiln.dump import compiled_notes
    levels = guards._OBJECT_DEPTH + 4
    ns = exec_world(f"DEEP = 1.5\nfor _ in range({levels}):\n    DEEP = [DEEP]\n"
                    "def f(x):\n    v = DEEP\n    while isinstance(v, list):\n"
                    "        v = v[0]\n    return x * v\n")
    f = kiln.compile(ns["f"], backend="c")
    x = kiln.randn(3)
    said = [m for m in _compile_warnings(f, x) if "NOT GUARDED" in m]
    cut = "DEEP" + "[0]" * guards._OBJECT_DEPTH
    assert len(said) == 1 and cut in said[0] and f"{guards._OBJECT_DEPTH} levels" in said[0]
    listed = [g.describe() for g in kiln.compiler.explain_report(f, (x,), {}).guards]
    assert any(line.startswith(f"NOT GUARDED: {cut} ") for line in listed)
    assert f"NOT GUARDED: {cut} " in compiled_notes(f)[0][1]
    assert "runs eagerly" in said[0]
    np.testing.assert_allclose(f(x).numpy(), x.numpy() * 1.5)
    v = ns["DEEP"]                  # changed past the limit: eager sees it, as it must
    for _ in range(levels - 1):
        v = v[0]
    v[0] = -2.0
    np.testing.assert_allclose(f(x).numpy(), x.numpy() * -2.0)
    assert replays(f) == 0


def test_past_the_guard_budget_the_place_is_said_and_the_call_runs_eagerly(monkeypatch):
    from kiln.compiler import guards
    monkeypatch.setattr(guards, "_GUARD_BUDGET", 60)
    ns = exec_world("class Box:\n    def __init__(self, v):\n        self.v = v\n"
                    "ITEMS = [Box(float(i)) for i in range(100)]\n"
                    "def f(x):\n    return x * ITEMS[80].v\n")
    f = kiln.compile(ns["f"], backend="c")
    x = kiln.randn(3)
    said = [m for m in _compile_warnings(f, x) if "NOT GUARDED" in m]
    assert len(said) == 1 and "ITEMS[" in said[0] and "past 60 guards" in said[0]
    np.testing.assert_allclose(f(x).numpy(), x.numpy() * 80.0)
    ns["ITEMS"][80].v = 3.0         # past the budget: a replay would not see it; eager does
    np.testing.assert_allclose(f(x).numpy(), x.numpy() * 3.0)
    assert replays(f) == 0


class _Batch:
    def __init__(self, x, y):
        self.x, self.y = x, y
        self.step = 0
        self.history = []
        self.scale = 2.0


def test_a_batch_field_the_call_does_not_read_is_not_in_the_key():
    """A batch object's fields the call reads are its key; a step counter and a history that
    change on every call outside it trace nothing again."""
    def step(b):
        return (b.x * b.scale - b.y).square().mean()

    f = kiln.compile(step, backend="c")
    b = _Batch(kiln.randn(4, 3), kiln.randn(4, 3))
    for i in range(12):
        b.step = i
        b.history.append(i * 0.5)
        np.testing.assert_allclose(f(b).item(), step(b).item(), rtol=1e-6)
    assert len(f.entries) == 1 and replays(f) == 11
    b.scale = -3.0          # read: a new key
    np.testing.assert_allclose(f(b).item(), step(b).item(), rtol=1e-6)
    assert len(f.entries) == 2
    fresh = _Batch(kiln.randn(4, 3), kiln.randn(4, 3))      # another object, the same scale
    fresh.scale, fresh.history = -3.0, [1.0] * 7
    np.testing.assert_allclose(f(fresh).item(), step(fresh).item(), rtol=1e-6)
    fresh.scale = 0.5
    np.testing.assert_allclose(f(fresh).item(), step(fresh).item(), rtol=1e-6)


def test_a_batch_read_by_computed_name_keys_every_field():
    ns = exec_world("NAME = 'scale'\ndef f(b):\n    return b.x * getattr(b, NAME)\n")
    f = kiln.compile(ns["f"], backend="c")
    b = _Batch(kiln.randn(3), None)
    for i, name in enumerate(["scale", "scale", "step", "step"]):
        ns["NAME"], b.step = name, i
        np.testing.assert_allclose(f(b).numpy(), ns["f"](b).numpy())


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x)


class _NetTrainer:
    def __init__(self):
        self.model = _Net()
        self.opt = kiln.optim.SGD(self.model.parameters(), lr=0.1)
        self.history = []
        self.epoch = 0


def test_a_trainer_of_a_module_subclass_traces_once_as_its_history_grows():
    """`super().__init__()` in a Module subclass's `__init__` is no read of `__init__`: every
    class's `__init__` (a trainer's, setting `history`) seemed to run, so the history the
    step never reads was guarded, and each call traced again."""
    def step(tr, x):
        loss = tr.model(x).square().mean()
        tr.opt.zero_grad()
        loss.backward()
        tr.opt.step()
        return loss

    kiln.manual_seed(0)
    a = _NetTrainer()
    kiln.manual_seed(0)
    b = _NetTrainer()
    f = kiln.compile(step, backend="c")
    x = kiln.randn(4, 3)
    for i in range(6):
        for tr in (a, b):
            tr.history.append(i)
            tr.epoch = i
        np.testing.assert_allclose(f(b, x).item(), step(a, x).item(), rtol=1e-5)
    assert len(f.entries) == 1 and replays(f) == 5


def _momentum_training(torch, compiled: bool) -> tuple:
    """Six steps of a hand-written optimizer keeping momentum on `p.momentum_buffer` (made on
    the first step, then updated in place), with parameters tagged `no_decay` left out of its
    weight decay: the losses and the final state."""
    class Momentum(torch.optim.Optimizer):
        def __init__(self, params, lr=0.1, momentum=0.9, weight_decay=0.05):
            super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

        @torch.no_grad()
        def step(self):
            for group in self.param_groups:
                for p in group["params"]:
                    g = p.grad
                    if not getattr(p, "no_decay", False):
                        g = g + group["weight_decay"] * p
                    if not hasattr(p, "momentum_buffer"):
                        p.momentum_buffer = g.clone()
                    else:
                        p.momentum_buffer.mul_(group["momentum"]).add_(g)
                    p.sub_(group["lr"] * p.momentum_buffer)

    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.tensor(rng.normal(size=tuple(p.shape)).astype(np.float32)))
    for p in model.parameters():
        p.no_decay = p.ndim == 1
    opt = Momentum(model.parameters())

    def step(x, y):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss
    run = kiln.compile(step) if compiled else step
    losses = []
    for i in range(6):
        x = torch.tensor(rng.normal(size=(8, 4)).astype(np.float32))
        y = torch.tensor(rng.normal(size=(8, 2)).astype(np.float32))
        losses.append(run(x, y).item())
    state = [(p.detach().numpy().copy(), p.momentum_buffer.numpy().copy())
             for p in model.parameters()]
    return losses, state, run


def test_momentum_on_the_parameter_and_no_decay_tags_compiled_eager_torch():
    torch = pytest.importorskip("torch")
    want_losses, want_state, _ = _momentum_training(torch, False)
    eager_losses, eager_state, _ = _momentum_training(kiln, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no eager fallback, no warning
        losses, state, run = _momentum_training(kiln, True)
    np.testing.assert_allclose(eager_losses, want_losses, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-5, atol=1e-6)
    for (p, buf), (ep, ebuf), (tp, tbuf) in zip(state, eager_state, want_state):
        np.testing.assert_allclose(ep, tp, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ebuf, tbuf, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(p, ep, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(buf, ebuf, rtol=1e-5, atol=1e-6)
    assert replays(run) >= 4, [(e.calls, e.eager_reason) for e in run.entries.values()]


class _Counted:
    pass


_COUNTED, _COUNTED_NS = _Counted(), types.SimpleNamespace()


class _CountingNet(kiln.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = kiln.nn.Linear(3, 2)

    def forward(self, x):
        self.calls = getattr(self, "calls", 0) + 1      # an attribute the first call adds
        return self.fc(x)


@pytest.mark.parametrize("where", ["global object", "global namespace", "module in forward"])
def test_an_attribute_the_call_adds_to_reached_state_is_counted_every_call(where):
    """`obj.count = getattr(obj, "count", 0) + 1` on an object without the attribute yet: the
    first trace adds it, and a replay would not; before, replays left the count at 1 with no
    warning (a new attribute on a plain object or a module was not seen as a change). It now
    traces again, then runs eagerly with the warning, counting as eager does."""
    net = _CountingNet()
    for holder in (_COUNTED, _COUNTED_NS):
        vars(holder).pop("count", None)

    def bump(x):
        holder = _COUNTED if where == "global object" else _COUNTED_NS
        holder.count = getattr(holder, "count", 0) + 1
        return x * 2
    fn = kiln.compile(net if where == "module in forward" else bump)
    x = kiln.ones(1, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [fn(x) for _ in range(4)]
    counted = {"global object": lambda: _COUNTED.count, "global namespace": lambda: _COUNTED_NS.count,
               "module in forward": lambda: net.calls}[where]()
    assert counted == 4
    assert any("changes Python state a replay would not change" in str(w.message)
               for w in caught)
    want = net(x) if where == "module in forward" else x * 2
    for out in outs:
        np.testing.assert_allclose(out.detach().numpy(), want.detach().numpy(), rtol=1e-6)


def test_steps_that_flip_requires_grad_in_turn_replay_and_set_it_again():
    # WGAN's `for p in critic.parameters(): p.requires_grad = ...` at the top of the critic's
    # and the generator's step: the guard held the flag the call left, not the one it found, so
    # each step traced again after the other had run (8 traces in 4 rounds, then eager)
    torch = pytest.importorskip("torch")

    def build(lib):
        lib.manual_seed(0)
        gen, critic = lib.nn.Linear(2, 2), lib.nn.Linear(2, 1)
        return gen, critic, lib.optim.SGD(gen.parameters(), lr=0.1), \
            lib.optim.SGD(critic.parameters(), lr=0.1)

    def steps(lib, gen, critic, opt_g, opt_d):
        def critic_step(real, z):
            for p in critic.parameters():
                p.requires_grad = True
            opt_d.zero_grad()
            loss = critic(gen(z).detach()).mean() - critic(real).mean()
            loss.backward()
            opt_d.step()
            return loss

        def generator_step(z):
            for p in critic.parameters():
                p.requires_grad = False
            opt_g.zero_grad()
            loss = -critic(gen(z)).mean()
            loss.backward()
            opt_g.step()
            return loss
        return critic_step, generator_step

    rng = np.random.default_rng(0)
    data = [rng.standard_normal((4, 2)).astype(np.float32) for _ in range(3)]
    results, initial = {}, None
    for lib in (torch, kiln):
        gen, critic, opt_g, opt_d = build(lib)
        if lib is kiln:             # torch's initial weights
            for m, tm in zip((gen, critic), initial):
                m.load_state_dict({k: kiln.tensor(v) for k, v in tm.items()})
        else:
            initial = [{k: v.detach().numpy().copy() for k, v in m.state_dict().items()}
                       for m in (gen, critic)]
        critic_step, generator_step = steps(lib, gen, critic, opt_g, opt_d)
        if lib is kiln:
            critic_step, generator_step = kiln.compile(critic_step), kiln.compile(generator_step)
        losses = []
        for _ in range(5):
            for real in data[:2]:
                losses.append(critic_step(lib.tensor(real), lib.tensor(data[2])).item())
            losses.append(generator_step(lib.tensor(data[2])).item())
            flags = [p.requires_grad for p in critic.parameters()]
            assert flags == [False, False]
        states = [{k: v.detach().numpy().copy() for k, v in m.state_dict().items()}
                  for m in (gen, critic)]
        results[lib.__name__] = (losses, states, (critic_step, generator_step))
    np.testing.assert_allclose(results["kiln"][0], results["torch"][0], rtol=1e-5, atol=1e-6)
    for ks, ts in zip(results["kiln"][1], results["torch"][1]):
        for k in ts:
            np.testing.assert_allclose(ks[k], ts[k], rtol=1e-5, atol=1e-6)
    critic_step, generator_step = results["kiln"][2]
    # the critic's step: before and after the optimizers had state, and the flags it found
    assert len(critic_step.entries) <= 3 and len(generator_step.entries) <= 2
    assert replays(critic_step) >= 7 and replays(generator_step) >= 3


def test_a_step_calling_requires_grad_on_its_argument_sets_it_on_every_replay():
    # the replay skipped `x.requires_grad_()`: from the second call on, x.grad stayed None
    torch = pytest.importorskip("torch")
    w_np = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    w = kiln.tensor(w_np, requires_grad=True)

    def saliency(x):
        x.requires_grad_()
        return (x * w).tanh().sum()
    compiled = kiln.compile(saliency)
    tw = torch.tensor(w_np, requires_grad=True)
    for i in range(3):
        x_np = np.random.default_rng(i).standard_normal(3).astype(np.float32)
        x, tx = kiln.tensor(x_np), torch.tensor(x_np)
        compiled(x).backward()
        tx.requires_grad_()
        (tx * tw).tanh().sum().backward()
        assert x.requires_grad
        np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-6, atol=1e-7)
    assert replays(compiled) == 2


class _Stepper:
    def __init__(self):
        self.n = 0

    def step(self, x):
        self.n += 1
        return x * self.n


@pytest.mark.parametrize("how", ["compiled twice", "called from a compiled lambda",
                                 "held in a dict", "compiled twice, dynamic=False"])
def test_a_compiled_function_reached_through_another_is_guarded(how):
    # the walk stopped at a CompiledFunction: `kiln.compile(kiln.compile(obj.step))`
    # returned x * 1 on every call and never moved obj.n (helper-counters' finding)
    ref, obj = _Stepper(), _Stepper()
    inner = kiln.compile(obj.step, dynamic=False if "dynamic" in how else None)
    steps = {"train": inner}
    fn = {"called from a compiled lambda": lambda: kiln.compile(lambda x: inner(x)),
          "held in a dict": lambda: kiln.compile(lambda x: steps["train"](x))}.get(
        how, lambda: kiln.compile(inner))()
    x = kiln.ones(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(5):
            assert fn(x).tolist() == ref.step(x).tolist(), i
            assert obj.n == ref.n


def test_a_class_whose_module_is_no_string_does_not_stop_the_walk():
    ext = types.ModuleType("user_ext")            # no __file__: walked as a user's module

    class Meta(type):
        pass
    Meta.__module__ = property(lambda self: "x")   # as Cython's _common_types_metatype
    ext.Meta = Meta

    @kiln.compile
    def f(x, name):
        getattr(ext, name)
        return x * 2

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            np.testing.assert_array_equal(f(kiln.ones(2), "__name__").numpy(), [2.0, 2.0])
