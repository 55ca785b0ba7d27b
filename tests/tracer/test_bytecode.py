"""kiln.tracer.bytecode: which returns leave a just-read number unseen by the function."""

import sys

import pytest

from kiln.tracer import bytecode
from kiln.tracer.bytecode import returned_unseen

# the answers below are for the bytecode the reader knows; on another Python it says False
known = pytest.mark.skipif(not bytecode._KNOWN, reason="a Python whose bytecode kiln does not read")


class Probe:
    """`.item()` answers whether its caller returns the number without looking at it (and
    keeps its answers, for callers that drop the number)."""

    answers: list = []

    def item(self):
        frame = sys._getframe(1)
        self.answers.append(returned_unseen(frame.f_code, frame.f_lasti))
        return self.answers[-1]


p = Probe()
CASES = {
    # returned as it is, alone or packed (as a value)
    "alone": (lambda: p.item(), True),
    "tuple": (lambda: (p.item(), p.item()), (True, True)),
    "dict": (lambda: {"loss": p.item(), "acc": p.item()}, {"loss": True, "acc": True}),
    "list beside a call": (lambda: [p.item(), len("ab")], [True, 2]),
    "conditional": (lambda: p.item() if len("a") else 0.0, True),
    "beside arithmetic": (lambda: (p.item(), 2 * len("ab") > 3), (True, True)),
    # seen: arithmetic, an argument, a dict key, a call of it
    "arithmetic": (lambda: p.item() * 2, 0),
    "argument": (lambda: float(p.item()), 0.0),
    "keyword argument": (lambda: dict(loss=p.item()), {"loss": False}),
    "dict key": (lambda: {p.item(): 1}, {False: 1}),
    "compared": (lambda: p.item() > 0, False),
}


@known
@pytest.mark.parametrize("name", sorted(CASES))
def test_returned_unseen(name):
    fn, expected = CASES[name]
    assert fn() == expected


def stored_then_returned():
    value = p.item()
    return value


def stored_beside_other_work():
    loss = p.item()
    n = len("abc") * 2
    acc = p.item()
    return loss, {"acc": acc, "n": n}


def stored_and_read_twice():
    value = p.item()
    return value, value


def stored_and_used():
    value = p.item()
    return value * 2


def stored_and_branched_on():
    value = p.item()
    if len("a"):
        return value
    return 0.0


def stored_and_looked_at():
    value = p.item()
    names = locals()
    return value, names


def stored_and_overwritten():
    value = p.item()
    value = 1.0
    return value


@known
@pytest.mark.parametrize("fn, expected", [
    (stored_then_returned, True), (stored_beside_other_work, (True, {"acc": True, "n": 6})),
    (stored_and_read_twice, (False, False)), (stored_and_used, 0), (stored_and_branched_on, False),
    (stored_and_overwritten, 1.0)], ids=lambda v: getattr(v, "__name__", ""))
def test_a_number_kept_in_a_local(fn, expected):
    assert fn() == expected


@known
def test_a_number_kept_in_a_local_then_overwritten_is_not_returned():
    Probe.answers.clear()
    stored_and_overwritten()
    assert Probe.answers == [False]


@known
def test_a_number_kept_in_a_local_and_looked_at():
    assert stored_and_looked_at()[0] is False


@pytest.mark.skipif(bytecode._KNOWN, reason="a Python whose bytecode kiln reads")
def test_an_unknown_python_says_seen():
    assert (lambda: p.item())() is False
