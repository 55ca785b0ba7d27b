"""Random Python arithmetic and branches on number arguments that change between calls:
compiled vs eager.

`generate(seed)` draws the source of `f(x, i, t)` (`x` a tensor, `i` an int, `t` a float):
numbers computed from `i` and `t` with `+ - * / // % **`, `abs`, `min`/`max`, `math.sqrt`,
`math.cos`, `math.exp`; comparisons of them taken into Python (`if`, `and`, `not`, a
conditional expression, `min`); their uses as op operands, in a shape, in `range()`, and
returned. The number arguments are lifted once they change, their comparisons guard each
entry (`symbolic_number._condition`), and the guards must make every replay compute what
eager computes for that call. `check(seed)` calls `f` compiled and eagerly for a sequence of
(i, t) values drawn so that comparisons go both ways, and compares the results (values,
dtypes, Python numbers, the exception raised).

`python -m tests.fuzz_numbers FIRST COUNT` sweeps seeds and prints each failing source.
"""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np

import kiln

CALLS = 14


def _number(rng, depth: int) -> str:
    """A number expression of `i` (int) and `t` (float)."""
    if depth == 0 or rng.random() < 0.3:
        return str(rng.choice(["i", "t", "i", "t", "2", "3", "0.5", "1.5", "-1"]))
    a, b = _number(rng, depth - 1), _number(rng, depth - 1)
    kind = rng.integers(0, 12)
    if kind < 5:
        return f"({a} {rng.choice(['+', '-', '*'])} {b})"
    if kind == 5:
        return f"({a} / (abs({b}) + 1))"
    if kind == 6:
        return f"({a} {rng.choice(['//', '%'])} (abs({b}) + 1))"
    if kind == 7:
        return f"(abs({a}) ** {rng.choice(['2', '0.5', 'i % 3', '1.5'])})"
    if kind == 8:
        return f"{rng.choice(['min', 'max'])}({a}, {b})"
    if kind == 9:
        return f"math.sqrt(abs({a}) + 1)"
    if kind == 10:
        return f"math.{rng.choice(['cos', 'sin'])}({a})"
    return f"math.exp(min({a}, 3))"


def _condition(rng) -> str:
    a, b = _number(rng, 2), _number(rng, 1)
    cmp = f"{a} {rng.choice(['<', '<=', '>', '>=', '==', '!='])} {b}"
    kind = rng.integers(0, 5)
    if kind == 0:
        return f"not ({cmp})"
    if kind == 1:
        return f"({cmp}) and ({_number(rng, 1)} > 0)"
    if kind == 2:
        return f"bool({_number(rng, 1)} % 2)"
    return cmp


def generate(seed: int) -> str:
    rng = np.random.default_rng(seed)
    lines = ["def f(x, i, t):"]
    for k in range(int(rng.integers(1, 4))):
        lines.append(f"    a{k} = {_number(rng, 2)}")
        use = rng.integers(0, 7)
        if use < 3:
            lines.append(f"    if {_condition(rng)}:")
            lines.append(f"        x = x * a{k}")
            lines.append("    else:")
            lines.append(f"        x = x - {_number(rng, 1)}")
        elif use == 3:
            lines.append(f"    x = x + (a{k} if {_condition(rng)} else {_number(rng, 1)})")
        elif use == 4:
            lines.append(f"    x = x * min(a{k}, {_number(rng, 1)})")
        elif use == 5:
            lines.append(f"    x = x[: 1 + int(abs(a{k})) % 3].sum(0, keepdim=True)"
                         ".expand(3) if i % 2 else x + 1")
        else:
            lines.append(f"    for _ in range(int(abs(a{k})) % 3):")
            lines.append("        x = x * 0.5")
    ret = rng.integers(0, 3)
    lines.append("    return x" if ret == 0 else
                 f"    return x, {_number(rng, 1)}" if ret == 1 else
                 f"    return x * {_number(rng, 2)}, {_condition(rng)}")
    return "\n".join(lines) + "\n"


def _calls(seed: int) -> list:
    rng = np.random.default_rng(seed + 1)
    return [(int(rng.integers(-4, 6)), float(rng.choice([-2.5, -1.0, -0.25, 0.0, 0.5, 1.0,
                                                         1.75, 3.0])))
            for _ in range(CALLS)]


def _outcome(fn, x, i, t):
    try:
        out = fn(x, i, t)
    except Exception as e:      # noqa: BLE001 - compared by type
        return ("raised", type(e).__name__)
    outs = out if isinstance(out, tuple) else (out,)
    return tuple(("tensor", o.dtype, o.shape, o.numpy().tolist()) if isinstance(o, kiln.Tensor)
                 else (type(o).__name__, o) for o in outs)


def _same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(p, q) for p, q in zip(a, b))
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(p, q) for p, q in zip(a, b))
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b)) or \
            abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))
    return a == b


def check(seed: int, backend: str = "numpy") -> tuple:
    """(the calls whose compiled result differs from eager's, how many calls replayed)."""
    source = generate(seed)
    ns = {"math": math, "kiln": kiln}
    exec(compile(source, f"<numbers {seed}>", "exec"), ns)
    f = ns["f"]
    compiled = kiln.compile(f, backend=backend)
    wrong = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, t in _calls(seed):
            x = kiln.tensor([1.0, -2.0, 0.5])
            got, want = _outcome(compiled, x, i, t), _outcome(f, x.clone(), i, t)
            if not _same(got, want):
                wrong.append(((i, t), got, want))
    replays = sum(e.calls for e in compiled.entries.values() if e.program is not None)
    return wrong, replays


if __name__ == "__main__":
    first, count = int(sys.argv[1]), int(sys.argv[2])
    failing, replayed = 0, 0
    for seed in range(first, first + count):
        wrong, replays = check(seed)
        replayed += replays
        if wrong:
            failing += 1
            print(f"FAILING seed {seed}:\n{generate(seed)}")
            for w in wrong[:3]:
                print("  ", w)
    print(f"{count} seeds, {failing} failing; {replayed} of {count * CALLS} calls replayed")
