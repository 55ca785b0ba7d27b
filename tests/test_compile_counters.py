"""A compiled step that changes a Python number held in state (a hand-written Adam's
`state["step"] += 1`, a trainer's `self.n += 1`) replays: the program reads the place as a
runtime number and each replay writes the new value back, as torch.compile's automatic dynamic
int does. A counter read into Python control flow stays specialised: never a stale replay.
"""

import warnings

import numpy as np
import pytest
import torch

import kiln
import kiln.nn as nn
import kiln.nn.functional as F


def _kinds(fn, calls):
    """Run each of `calls` (a function of no arguments calling the compiled `fn`) and return
    (results, how each ran: "trace", "replay" or "eager")."""
    results, kinds = [], []
    for call in calls:
        before = _counts(fn)
        results.append(call())
        entries, replays, eager = _counts(fn)
        if eager > before[2] or entries > before[0] and \
                list(fn.entries.values())[-1].program is None:
            kinds.append("eager")
        else:
            kinds.append("replay" if replays > before[1] else "trace")
    return results, kinds


def _counts(fn) -> tuple:
    return (len(fn.entries),
            sum(e.calls for e in fn.entries.values() if e.program is not None),
            sum(e.calls for e in fn.entries.values() if e.program is None))


def _mlp(lib, seed=0):
    rng = np.random.default_rng(seed)
    model = lib.nn.Sequential(lib.nn.Linear(4, 8), lib.nn.Tanh(), lib.nn.Linear(8, 3))
    with lib.no_grad():
        for p in model.parameters():
            p.copy_(lib.tensor(rng.uniform(-0.5, 0.5, tuple(p.shape)).astype(np.float32)))
    return model


def _batches(n, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((6, 4)).astype(np.float32),
             rng.standard_normal((6, 3)).astype(np.float32)) for _ in range(n)]


def _adam_class(lib):
    class Adam(lib.optim.Optimizer):
        """The tutorial's hand-written Adam: an int step count in each parameter's state."""

        def __init__(self, params, lr=1e-2, betas=(0.9, 0.999), eps=1e-8):
            super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

        def step(self):
            with lib.no_grad():
                for group in self.param_groups:
                    beta1, beta2 = group["betas"]
                    for p in group["params"]:
                        if p.grad is None:
                            continue
                        st = self.state[p]
                        if not st:
                            st["step"] = 0
                            st["m"] = lib.zeros_like(p)
                            st["v"] = lib.zeros_like(p)
                        st["step"] += 1
                        st["m"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                        st["v"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                        bc1 = 1 - beta1 ** st["step"]
                        bc2 = 1 - beta2 ** st["step"]
                        p.addcdiv_(st["m"] / bc1, (st["v"] / bc2).sqrt() + group["eps"],
                                   value=-group["lr"])
    return Adam


def _train(lib, make_opt, compiled: bool, steps: int = 10):
    model = _mlp(lib)
    opt = make_opt(model.parameters())

    def train_step(x, y):
        opt.zero_grad()
        loss = lib.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    fn = kiln.compile(train_step) if compiled else train_step
    calls = [lambda x=x, y=y: fn(lib.tensor(x), lib.tensor(y)).item()
             for x, y in _batches(steps)]
    if compiled:
        losses, kinds = _kinds(fn, calls)
    else:
        losses, kinds = [c() for c in calls], None
    weights = [p.detach().numpy().copy() for p in model.parameters()]
    steps_seen = [opt.state[p]["step"] for p in model.parameters()]
    return losses, weights, kinds, steps_seen


def test_hand_written_adam_replays_and_equals_eager_and_torch():
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # no fallback warning: the step compiles
        compiled = _train(kiln, _adam_class(kiln), True)
    eager = _train(kiln, _adam_class(kiln), False)
    theirs = _train(torch, lambda params: torch.optim.Adam(params, lr=1e-2), False)
    losses, weights, kinds, steps = compiled
    # lazy state, then the step count seen changing (it is lifted), then replays
    assert kinds[:3] == ["trace"] * 3, kinds
    assert kinds[3:] == ["replay"] * 7, kinds
    np.testing.assert_allclose(losses, eager[0], rtol=1e-6, atol=1e-6)
    for w, e, t in zip(weights, eager[1], theirs[1]):
        np.testing.assert_allclose(w, e, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(w, t, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(losses, theirs[0], rtol=1e-5, atol=1e-5)
    # the int the replays wrote back, as eager leaves it
    assert steps == eager[3] == [10] * 4
    assert all(type(s) is int for s in steps)


class _Trainer:
    def __init__(self, model, opt):
        self.model, self.opt, self.n = model, opt, 0

    def step(self, x, y):
        self.n += 1
        # an EMA-style decay of the counter: the program computes it from the runtime value
        decay = 1 - 1 / (self.n + 1)
        self.opt.zero_grad()
        loss = F.mse_loss(self.model(x), y) * decay
        loss.backward()
        self.opt.step()
        return loss


def _trainer_run(compiled: bool, steps: int = 8):
    model = _mlp(kiln)
    trainer = _Trainer(model, kiln.optim.SGD(model.parameters(), lr=0.1))
    fn = kiln.compile(trainer.step) if compiled else trainer.step
    seen = []

    def call(x, y):
        loss = fn(kiln.tensor(x), kiln.tensor(y)).item()
        seen.append(trainer.n)          # the user reads the counter after each call
        return loss
    calls = [lambda x=x, y=y: call(x, y) for x, y in _batches(steps)]
    if compiled:
        losses, kinds = _kinds(fn, calls)
    else:
        losses, kinds = [c() for c in calls], None
    return losses, seen, [p.detach().numpy().copy() for p in model.parameters()], kinds


def test_counter_on_a_trainer_object():
    losses, seen, weights, kinds = _trainer_run(True)
    e_losses, e_seen, e_weights, _ = _trainer_run(False)
    assert kinds == ["trace", "trace"] + ["replay"] * 6, kinds
    assert seen == e_seen == list(range(1, 9))
    np.testing.assert_allclose(losses, e_losses, rtol=1e-6, atol=1e-7)
    for w, e in zip(weights, e_weights):
        np.testing.assert_allclose(w, e, rtol=1e-6, atol=1e-7)


def test_counter_on_a_module_attribute():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.lin(x) / self.calls

    m = Scaled()
    fn = kiln.compile(m)
    x = kiln.ones(4, 3)
    results, kinds = _kinds(fn, [lambda: fn(x).detach().numpy()] * 6)
    assert kinds == ["trace", "trace"] + ["replay"] * 4, kinds
    assert m.calls == 6
    with kiln.no_grad():
        base = m.lin(x).numpy()
    for i, r in enumerate(results):
        np.testing.assert_allclose(r, base / (i + 1), rtol=1e-6)


STEP = 0


def _global_step(x):
    global STEP
    STEP += 1
    return x * STEP


def test_counter_in_a_global():
    global STEP
    STEP = 0
    fn = kiln.compile(_global_step)
    x = kiln.arange(4.0)
    results, kinds = _kinds(fn, [lambda: fn(x).numpy()] * 6)
    assert kinds == ["trace", "trace"] + ["replay"] * 4, kinds
    assert STEP == 6
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r, np.arange(4.0) * (i + 1))


def test_counter_in_a_closure():
    def make():
        count = 10

        def step(x):
            nonlocal count
            count += 2
            return x - count
        return step, lambda: count
    step, count = make()
    fn = kiln.compile(step)
    x = kiln.zeros(3)
    results, kinds = _kinds(fn, [lambda: fn(x).numpy()] * 5)
    assert kinds == ["trace", "trace"] + ["replay"] * 3, kinds
    assert count() == 20
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r, np.full(3, -(10 + 2 * (i + 1)), np.float32))


def test_counter_in_a_dict_entry_and_two_counters():
    stats = {"seen": 0, "scale": 1.0}

    def step(x):
        stats["seen"] += x.shape[0]     # (a shape: a plain int, the same each call)
        stats["scale"] = stats["scale"] * 2
        return x * stats["scale"] + stats["seen"]

    fn = kiln.compile(step)
    x = kiln.ones(2)
    results, kinds = _kinds(fn, [lambda: fn(x).numpy()] * 6)
    assert kinds == ["trace", "trace"] + ["replay"] * 4, kinds
    assert stats == {"seen": 12, "scale": 64.0}
    assert type(stats["seen"]) is int and type(stats["scale"]) is float
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r, np.full(2, 2.0 ** (i + 1) + 2 * (i + 1), np.float32))


class _Counted:
    def __init__(self):
        self.n = 0

    def step(self, x):
        self.n += 1
        loss = (x * self.n).sum()
        if self.n % 3 == 0:         # Python control flow on the counter: a guard
            loss = loss * 2
        return loss


def test_counter_in_control_flow_replays_the_branch_its_value_takes():
    # `if self.n % 3 == 0` takes a bool into Python: the entry holds while the counter's value
    # at the call's start gives the same bool (a guard), so both branches replay, each only
    # for the values that take it
    ref, obj = _Counted(), _Counted()
    fn = kiln.compile(obj.step)
    x = kiln.ones(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(15):
            got = fn(x).item()
            want = ref.step(x).item()
            assert got == want
            assert obj.n == ref.n and type(obj.n) is int
    replays = sorted(e.calls for e in fn.entries.values() if e.program is not None)
    assert sum(replays) >= 10 and len(fn.entries) <= 5, replays


def test_counter_the_caller_changes_between_calls():
    obj = _Counter()
    fn = kiln.compile(obj.step)
    x = kiln.ones(2)
    _, kinds = _kinds(fn, [lambda: fn(x)] * 3)
    assert kinds == ["trace", "trace", "replay"]
    for start in (100, -7, 0, 5):
        obj.n = start
        _, kinds = _kinds(fn, [lambda: fn(x).numpy()])
        assert kinds == ["replay"]
        np.testing.assert_array_equal(_[0], np.full(2, 3.0 * (start + 1), np.float32))
        assert obj.n == start + 1 and type(obj.n) is int
    obj.n = 2.5       # another type: traced again, computed with the float
    assert fn(x).numpy().tolist() == [10.5, 10.5]
    assert obj.n == 3.5


class _Counter:
    def __init__(self):
        self.n = 0

    def step(self, x):
        self.n += 1
        return x * (self.n * 3)


def test_counter_read_after_each_call_and_returned():
    class Logger:
        def __init__(self):
            self.n = 0

        def step(self, x):
            self.n = self.n + 1
            return x.sum() * 2, self.n          # returned: read into Python

    ref, obj = Logger(), Logger()
    fn = kiln.compile(obj.step)
    x = kiln.ones(3)
    for _ in range(6):
        got, n = fn(x)
        want, m = ref.step(x)
        assert (got.item(), n, obj.n) == (want.item(), m, ref.n)
        assert type(n) is int and type(obj.n) is int


def test_tensor_counter_stays_a_tensor():
    class Holder:
        def __init__(self):
            self.steps = kiln.zeros(())

    h = Holder()

    def step(x):
        h.steps += 1
        return x * h.steps

    fn = kiln.compile(step)
    x = kiln.ones(2)
    results, kinds = _kinds(fn, [lambda: fn(x).numpy()] * 5)
    assert "eager" not in kinds and kinds[-1] == "replay", kinds
    assert isinstance(h.steps, kiln.Tensor) and h.steps.item() == 5.0
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r, np.full(2, i + 1.0, np.float32))


def test_counter_on_an_object_passed_as_an_argument():
    # (kiln's flattening of the arguments probes the object's attributes: no read of the value)
    obj = _Counter()
    fn = kiln.compile(lambda x, c: c.step(x))
    x = kiln.ones(2)
    results, kinds = _kinds(fn, [lambda: fn(x, obj).numpy()] * 5)
    assert kinds == ["trace", "trace"] + ["replay"] * 3, kinds
    assert obj.n == 5
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r, np.full(2, 3.0 * (i + 1), np.float32))


def test_counter_stored_elsewhere_or_typed_is_not_lifted():
    class Typed:
        def __init__(self):
            self.n, self.last = 0, None

        def step(self, x):
            self.n += 1
            self.last = self.n              # a second place: read into Python
            # type() would tell a lifted number from an int: such code is never lifted
            return x * self.n if type(self.n) is int else x * 0

    for dynamic in (None, False):
        ref, obj = Typed(), Typed()
        fn = kiln.compile(obj.step, dynamic=dynamic)
        x = kiln.ones(2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(6):
                np.testing.assert_array_equal(fn(x).numpy(), ref.step(x).numpy())
                assert (obj.n, obj.last) == (ref.n, ref.last)
                assert type(obj.n) is int and type(obj.last) is int


def test_explain_lists_the_write_back():
    obj = _Counter()
    fn = kiln.compile(obj.step)
    x = kiln.ones(2)
    fn(x), fn(x), fn(x)
    entry = list(fn.entries.values())[-1]
    assert [name for name, *_ in entry.program.number_writes] == ["self.n"]
    # guarded on the number's type only; its value is read by the program
    assert [g.describe() for g in entry.guards if g.source == "self.n"] == \
        ["self.n is a int (read on every call)"]
    assert "self.n = (its value at the call" in str(kiln.compiler.explain(fn, x))


def test_counter_over_two_input_shapes():
    ref, obj = _Counter(), _Counter()
    fn = kiln.compile(obj.step)
    xs = [kiln.ones(2), kiln.ones(3)]
    calls = [lambda i=i: fn(xs[i % 2]).numpy() for i in range(10)]
    results, kinds = _kinds(fn, calls)
    assert kinds[-4:] == ["replay"] * 4, kinds
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r, ref.step(xs[i % 2]).numpy())
    assert obj.n == ref.n == 10


def test_a_lifted_trace_that_raises_leaves_eager_values():
    class Failing:
        def __init__(self):
            self.n = 0

        def step(self, x, fail=False):
            self.n += 1
            if fail:
                raise ValueError("user error")
            return x * self.n

    obj = Failing()
    fn = kiln.compile(obj.step)
    x = kiln.ones(2)
    fn(x), fn(x)                    # the second call lifts the counter
    with pytest.raises(ValueError, match="user error"):
        fn(x, fail=True)            # (another key: a trace with the counter lifted)
    assert obj.n == 3 and type(obj.n) is int
    for n in range(4, 8):
        np.testing.assert_array_equal(fn(x).numpy(), np.full(2, float(n), np.float32))
        assert obj.n == n and type(obj.n) is int
