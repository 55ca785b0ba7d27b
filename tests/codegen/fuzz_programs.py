"""Seeded random programs for differential fuzzing: compiled backends against eager kiln.

A program is Python source over `torch` (kiln or PyTorch, bound when it runs): a few inputs of
short and long rows (16xN and Nx16, where the C backend unrolls short-row reductions), then
lines mixing elementwise ops, comparisons, casts, reductions and movement. The generator runs
each candidate line on PyTorch as it draws it and keeps only the lines PyTorch accepts, so it
needs no shape or dtype rules of its own. `check` runs a program eagerly, on PyTorch, and
compiled (the first call traces, later calls replay on fresh inputs); `minimize` shrinks a
failing program to the few lines that still fail. `python -m tests.codegen.fuzz_programs
FIRST COUNT` runs a range of seeds and prints each mismatch, minimized.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from dataclasses import dataclass, replace

import numpy as np

import kiln

DTYPES = ["float32", "float64", "int32", "int64", "bool", "uint8", "int8"]
FLOATS = ("float32", "float64")
MAX_NUMEL = 4096
FILLS = {"float": ["-5.0", "0.0", "1.5", "-math.inf"], "int": ["-5", "0", "7"],
         "uint8": ["0", "7"], "bool": ["True", "False"]}
# uint8 meets no negative Python ints: PyTorch wraps such a scalar into uint8 (x < -5 is
# x < 251, clamp(-2) clamps to 254); kiln compares and clamps with the value itself


@dataclass(frozen=True)
class Program:
    """Inputs (shape, dtype name), lines `vN = expr` over v0.. and the names returned."""
    inputs: tuple
    lines: tuple
    outputs: tuple

    def source(self) -> str:
        args = ", ".join(f"v{i}" for i in range(len(self.inputs)))
        body = [f"    {line}" for line in self.lines]
        body.append(f"    return ({', '.join(self.outputs)},)")
        return "\n".join([f"def fn({args}):", *body])

    def function(self, lib):
        """The program as a function over `lib` (kiln, or torch)."""
        scope = {"torch": lib, "math": math}
        exec(compile(self.source(), "<fuzz program>", "exec"), scope)
        return scope["fn"]

    def __str__(self) -> str:
        shapes = ", ".join(f"{d}{list(s)}" for s, d in self.inputs)
        return f"# inputs: {shapes}\n{self.source()}"


def _kind(dtype: str) -> str:
    return "float" if dtype in FLOATS else "bool" if dtype == "bool" else "int"


def input_arrays(program: Program, seed: int) -> list:
    """Fresh input values: floats near small integers (so `x == -5.0` can hold), ints in a
    small range, masks about half set."""
    rng = np.random.default_rng(seed)
    arrays = []
    for shape, dtype in program.inputs:
        kind = _kind(dtype)
        if kind == "float":
            a = rng.standard_normal(shape) * 3
            exact = rng.random(shape) < 0.3
            a[exact] = np.round(a[exact])
        elif kind == "bool":
            a = rng.random(shape) < rng.uniform(0.2, 0.8)
        elif dtype == "uint8":
            a = rng.integers(0, 12, shape)
        else:
            a = rng.integers(-6, 7, shape)
        arrays.append(np.asarray(a).astype(dtype))
    return arrays


def _side(rng) -> int:
    return int(rng.choice([1, 2, 3, 4, 5, 7, 8, 16, 16, 17, 24, 32, 40]))


def _input_shapes(rng, cap: int) -> list:
    ndim = int(rng.integers(1, 5))
    shape = [_side(rng) for _ in range(ndim)]
    if rng.random() < 0.5:          # 16 or more rows of at most 16: the unrolled row kernels
        rows = [int(rng.choice([16, 16, 17, 32, 48, 64])), int(rng.integers(1, 17))]
        shape[-2:] = rows[::1 if rng.random() < 0.7 else -1]
    while math.prod(shape) > cap:
        shape[int(np.argmax(shape))] //= 2
    shapes = [tuple(shape)]
    for _ in range(int(rng.integers(0, 3))):
        r = rng.random()
        if r < 0.65:
            other = list(shape)
        elif r < 0.85:                                 # broadcasts: some dims 1, some dropped
            other = [1 if rng.random() < 0.4 else s for s in shape]
            other = other[int(rng.integers(0, len(other))):] or [shape[-1]]
        else:
            other = [_side(rng) for _ in range(int(rng.integers(1, 4)))]
            while math.prod(other) > cap:
                other[int(np.argmax(other))] //= 2
        shapes.append(tuple(other))
    return shapes


class _Drawer:
    """Draws one candidate line at a time over the variables so far (PyTorch values)."""

    def __init__(self, rng, values: dict, cap: int):
        self.rng, self.values, self.cap = rng, values, cap

    def pick(self, kinds=None):
        names = [n for n, v in self.values.items()
                 if kinds is None or _kind(str(v.dtype).split(".")[-1]) in kinds]
        if not names:
            return None
        recent = names[-3:]
        return str(self.rng.choice(recent if self.rng.random() < 0.6 else names))

    def partner(self, x: str):
        """A variable whose shape broadcasts with x's (itself included)."""
        sx = tuple(self.values[x].shape)
        names = [n for n, v in self.values.items() if _broadcasts(sx, tuple(v.shape))]
        return str(self.rng.choice(names))

    def dtype(self, name: str) -> str:
        return str(self.values[name].dtype).split(".")[-1]

    def fills(self, name: str) -> list:
        """Constants to compare a variable with or to fill it with."""
        dtype = self.dtype(name)
        return FILLS["uint8" if dtype == "uint8" else _kind(dtype)]

    def ndim(self, name: str) -> int:
        return self.values[name].ndim

    def choice(self, options):
        return options[int(self.rng.integers(0, len(options)))]

    def line(self, kinds: list) -> str | None:
        return getattr(self, f"_{self.choice(kinds)}")()

    def _unary(self):
        x = self.pick()
        ops = {"float": ["{x}.abs()", "-{x}", "{x}.clamp(-10, 10).exp()", "({x}.abs() + 1).log()",
                         "{x}.abs().sqrt()", "{x}.tanh()", "{x}.sigmoid()", "{x}.relu()",
                         "{x} * 2.5 - 1", "{x}.floor()", "{x} * {x}"],
               "int": ["{x}.abs()", "-{x}", "{x} * 3", "{x} + 2", "{x} // 3", "{x} % 3"],
               "bool": ["~{x}", "{x}.logical_not()", "{x}.int()"]}
        return self.choice(ops[_kind(self.dtype(x))]).format(x=x)

    def _compare(self):
        x = self.pick()
        y = self.partner(x)
        c = self.choice(self.fills(x)[:3])
        if self.dtype(x) == "uint8":
            y = x if self.dtype(y) in ("int8", "int32", "int64") else y
            return self.choice(["{x} > {y}", "{x} == {c}", "{x} <= {y}", "{x} < {c}"]).format(
                x=x, y=y, c=c)
        return self.choice(["{x} > {y}", "{x} == {c}", "{x} <= {y}", "{x} != {y}",
                            "{x} < {c}", "{x} >= 0"]).format(x=x, y=y, c=c)

    def _logic(self):
        m = self.pick(["bool"])
        if m is None:
            return None
        n = self.partner(m)
        return self.choice(["{m} & {n}", "{m} | {n}", "{m} ^ {n}", "~{m}",
                            "{m}.logical_and({n})"]).format(m=m, n=n)

    def _where(self):
        m = self.pick(["bool"])
        if m is None:
            return None
        x = self.partner(m)
        y = self.partner(x)
        c = self.choice(self.fills(x))
        return self.choice(["torch.where({m}, {x}, {y})", "torch.where({m}, {x}, {c})",
                            "torch.where(~{m}, {c}, {x})"]).format(m=m, x=x, y=y, c=c)

    def _fill(self):
        m = self.pick(["bool"])
        if m is None:
            return None
        x = self.partner(m)
        c = self.choice(self.fills(x))
        return self.choice(["{x}.masked_fill({m}, {c})",
                            "{x}.masked_fill(~{m}, {c})"]).format(m=m, x=x, c=c)

    def _clamp(self):
        x = self.pick(["float", "int"])
        if x is None:
            return None
        options = ["{x}.clamp_min(0)", "{x}.clamp(max=1)", "{x}.clamp(1, 4)"]
        if self.dtype(x) != "uint8":      # PyTorch wraps a negative bound into uint8; kiln not
            options.append("{x}.clamp(-2, 3)")
        return self.choice(options).format(x=x)

    def _cast(self):
        x = self.pick()
        safe = f"{x}.nan_to_num(0.0).clamp(-100, 100)" if self.dtype(x) in FLOATS else x
        unsigned = f"{x}.nan_to_num(0.0).clamp(0, 200)" if self.dtype(x) in FLOATS else x
        return self.choice([f"{x}.float()", f"{x}.double()", f"{safe}.int()", f"{safe}.long()",
                            f"{x}.bool()", f"{unsigned}.to(torch.uint8)",
                            f"{safe}.to(torch.int8)"])

    def _binary(self):
        x = self.pick(["float", "int"])
        if x is None:
            return None
        y = self.partner(x)
        return self.choice(["{x} + {y}", "{x} - {y}", "{x} * {y}", "torch.maximum({x}, {y})",
                            "torch.minimum({x}, {y})", "{x} / ({y}.abs() + 1)",
                            "{x} + {y}.float()"]).format(x=x, y=y)

    def _dim(self, x):
        n = max(self.ndim(x), 1)
        return self.choice([-1, -1, 0, n - 2 if n >= 2 else 0])

    def _reduce(self):
        x = self.pick()
        keep = self.choice([True, False])
        d = self._dim(x)
        op = self.choice(["sum", "amax", "amin", "mean", "all", "any", "argmax", "softmax",
                          "logsumexp", "log_softmax"])
        if op in ("softmax", "log_softmax"):
            return f"{x}.{op}({d})"
        if op == "logsumexp":
            return f"{x}.logsumexp({d}, keepdim={keep})"
        form = self.choice(["dim", "dim", "all", "pair"])
        if form == "all" or self.ndim(x) == 0:
            return f"{x}.{op}()"
        if form == "pair" and self.ndim(x) >= 2 and op not in ("all", "any", "argmax"):
            return f"{x}.{op}(dim=(0, -1), keepdim={keep})"
        return f"{x}.{op}(dim={d}, keepdim={keep})"

    def _move(self):
        x = self.pick()
        v = self.values[x]
        n = v.ndim
        if n == 0:
            return f"{x}.reshape(1, 1)"
        options = [f"{x}.reshape(-1)", f"{x}.unsqueeze(0)", f"{x}.unsqueeze(-1)",
                   f"{x}[::2]", f"{x}[1:]", f"{x}[..., 1:]", f"{x}[..., ::3]",
                   f"{x}.flip(-1)", f"{x}.contiguous()"]
        if n >= 2:
            perm = tuple(int(i) for i in self.rng.permutation(n))
            options += [f"{x}.permute{perm}", f"{x}.transpose(0, -1)", f"{x}.mT",
                        f"{x}.flatten(0, 1)", f"{x}.reshape({v.shape[0]}, -1)",
                        f"{x}[:, 1:-1]", f"{x}.mT.contiguous()"]
        sizes = list(v.shape)
        if 1 in sizes:
            sizes = [self.choice([3, 16]) if s == 1 else s for s in sizes]
            if math.prod(sizes) <= self.cap:
                options.append(f"{x}.expand({', '.join(map(str, sizes))})")
        return self.choice(options)

    def _chain(self):
        """A short chain seen in masking code: fill, then test every element of the rows."""
        m = self.pick(["bool"])
        x = self.pick(["float"])
        if m is None or x is None:
            return None
        near = self.partner(m)             # the mask's shape, when a float has it
        x = near if self.dtype(near) in FLOATS else x
        d = self._dim(x)
        return self.choice([
            f"{x}.masked_fill((({x} == -5.0).all(dim={d}, keepdim=True)), 0.0)",
            f"({x} * {m}).sum(dim={d}, keepdim=True) / {m}.sum(dim={d}, keepdim=True)"
            f".clamp_min(1)",
            f"{x}.masked_fill(~{m}, -math.inf).softmax({d}).nan_to_num(0.0)",
            f"torch.where({m}, {x}, -1e9).amax(dim={d}) + {m}.any(dim={d}).float()",
            f"{x} - {x}.amax(dim={d}, keepdim=True)",
            f"({x}.masked_fill(~{m}, -5.0) == -5.0).all(dim={d}, keepdim=True)",
            f"{x}.masked_fill(~{m}, -5.0).amax(dim={d}) == -5.0",
            f"({m} & ({x} > 0)).any(dim={d}, keepdim=True)"])


    def _rowwise(self):
        """A masked value, reduced over its rows, and the rows' result used back on every
        element: one kernel of two passes over each row (where GCC 12 miscompiled kiln's
        unrolled short rows)."""
        m = self.pick()
        x = self.partner(m)
        c = self.choice(self.fills(x)[:2])
        if self.dtype(m) != "bool":         # an int or float mask, as code often holds one
            m = f"({m} != 0)"
        y = self.choice([f"{x}.masked_fill(~{m}, {c})", f"torch.where({m}, {x}, {c})",
                         f"({x} * {m})", f"({x} + {m})"])
        d = self._dim(x)
        r = self.choice(["({Y} == {c}).all(dim={d}, keepdim=True)",
                         "({Y} != {c}).any(dim={d}, keepdim=True)",
                         "({Y}.amax(dim={d}, keepdim=True) == {c})",
                         "({Y}.amin(dim={d}, keepdim=True) < {c})"])
        use = self.choice(["{Y}.masked_fill({R}, 0)", "torch.where({R}, {Y}, {x})", "{Y} * {R}",
                           "{Y} - {Y}.amax(dim={d}, keepdim=True) + {R}"])
        r = r.format(Y=y, c=c, d=d)
        return use.format(Y=y, R=r, x=x, d=d)


def _broadcasts(a: tuple, b: tuple) -> bool:
    return all(x == y or x == 1 or y == 1 for x, y in zip(a[::-1], b[::-1]))


KINDS = ["unary", "unary", "compare", "logic", "where", "fill", "clamp", "cast", "binary",
         "binary", "reduce", "reduce", "reduce", "move", "move", "chain", "rowwise", "rowwise"]
# masking code over short rows only: a float and a mask of 16 or more rows of at most 16
MASK_KINDS = ["compare", "logic", "where", "fill", "reduce", "chain", "rowwise", "rowwise"]


def generate(seed: int, focus: str = "all") -> Program:
    """A program of 1..10 lines that PyTorch runs, with its inputs and returned names.
    focus="masks": a float and a mask of short rows, and the lines masking code writes."""
    import torch
    rng = np.random.default_rng(seed)
    dtypes = [str(rng.choice(DTYPES)) for _ in range(3)]
    if rng.random() < 0.5 or focus == "masks":   # a float and a mask: masking code
        dtypes[:2] = [str(rng.choice(FLOATS)), "bool"]
    cap = MAX_NUMEL if rng.random() < 0.85 else 8 * MAX_NUMEL   # some past the C tiles
    shapes = _input_shapes(rng, cap)
    if focus == "masks":            # the mask as code holds it: bool, int or float
        rows = (int(rng.choice([16, 17, 32, 48])), int(rng.integers(1, 17)))
        shapes = [shapes[0][:-2] + rows] * 2
        dtypes[1] = str(rng.choice(["bool", "bool", "int32", "int64", "float32"]))
    inputs = tuple((s, d) for s, d in zip(shapes, dtypes))
    program = Program(inputs, (), ())
    values = {f"v{i}": torch.from_numpy(a) for i, a in enumerate(input_arrays(program, seed))}
    drawer = _Drawer(rng, values, cap)
    lines, length, inexact = [], int(rng.integers(1, 11)), set()
    for _ in range(200):
        if len(lines) >= length:
            break
        expr = drawer.line(MASK_KINDS if focus == "masks" else KINDS)
        if expr is None:
            continue
        try:
            out = eval(expr, {"torch": torch, "math": math}, dict(values))
        except Exception:
            continue
        if not isinstance(out, torch.Tensor) or not 0 < out.numel() <= cap:
            continue                # (PyTorch's softmax of an empty bool tensor is bool)
        if _discrete(expr) and _names(expr) & inexact:
            continue
        name = f"v{len(values)}"
        if out.is_floating_point() and (_inexact(expr) or _names(expr) & inexact):
            inexact.add(name)
        values[name] = out
        lines.append(f"{name} = {expr}")
    made = [f"v{i}" for i in range(len(inputs), len(values))]
    used = set().union(*(_names(line.split(" = ", 1)[1]) for line in lines))
    # every line feeds an output (none is dead code), and some values are used and returned
    outputs = [n for n in made if n not in used or rng.random() < 0.2]
    return Program(inputs, tuple(lines), tuple(outputs))


# Two implementations of exp, tanh or a sum's order round differently within the tolerance;
# a comparison, an integer cast or a floor of such a value would turn that into a mismatch
# (tanh(x).int() is 0 or 1 near x = 9). So discrete ops take only exactly computed floats.
INEXACT = ("exp", "log", "tanh", "sigmoid", "softmax", "sum", "mean", "/")
DISCRETE = ("==", "!=", ">", "<", ".int()", ".long()", ".bool()", "torch.uint8", "torch.int8",
            "floor", "argmax", ".all(", ".any(", "%", "//")


def _inexact(expr: str) -> bool:
    return any(token in expr for token in INEXACT)


def _discrete(expr: str) -> bool:
    return any(token in expr for token in DISCRETE)


def _numpy(t) -> np.ndarray:
    return np.asarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t.numpy())


def compare(got, want, what: str, rtol: float = 1e-5) -> str | None:
    """Why `got` differs from `want` (None when equal): dtype and shape exactly, ints and
    bools exactly, floats to rtol plus an atol scaled to the result's magnitude, NaN where
    NaN is."""
    gd, wd = str(got.dtype).split(".")[-1], str(want.dtype).split(".")[-1]
    if gd != wd or tuple(got.shape) != tuple(want.shape):
        return f"{what}: {gd}{list(got.shape)} != {wd}{list(want.shape)}"
    g, w = _numpy(got), _numpy(want)
    if gd not in FLOATS:
        bad = g != w
    else:
        finite = np.isfinite(w)
        scale = float(np.abs(w[finite]).max()) if finite.any() else 1.0
        with np.errstate(invalid="ignore"):
            bad = ~((g == w) | (np.isnan(g) & np.isnan(w))
                    | (finite & (np.abs(g - w) <= rtol * np.abs(w) + rtol * max(scale, 1.0))))
    if bad.any():
        where = tuple(int(i[0]) for i in np.nonzero(bad)) if bad.ndim else ()
        return (f"{what}: {int(bad.sum())} of {bad.size} differ; at {where} "
                f"got {g[where]!r} want {w[where]!r}")
    return None


def _call(fn, arrays, lib):
    return fn(*[lib.tensor(a) if lib is kiln else lib.from_numpy(a.copy()) for a in arrays])


def check(program: Program, seed: int, backends=("c", "numpy"), with_torch: bool = True,
          calls: int = 3) -> list:
    """The mismatches of one program: eager kiln against PyTorch, and each backend's
    compiled calls (a trace, then replays on fresh inputs) against eager kiln."""
    eager = program.function(kiln)
    problems = []
    if with_torch:
        import torch
        arrays = input_arrays(program, seed)
        for i, (e, t) in enumerate(zip(_call(eager, arrays, kiln),
                                       _call(program.function(torch), arrays, torch))):
            why = compare(e, t, f"eager vs torch, output {i}", rtol=1e-4)
            if why:
                problems.append(why)
    for backend in backends:
        compiled = kiln.compile(eager, backend=backend)
        for call in range(calls):   # KILN_KERNEL_CHOICE=c (set by main, the CI test) keeps C
            arrays = input_arrays(program, seed + 1000 * call)
            try:
                with warnings.catch_warnings(record=True) as seen:
                    warnings.simplefilter("always")
                    got = _call(compiled, arrays, kiln)
            except Exception as e:
                problems.append(f"{backend} call {call}: raised {type(e).__name__}: {e}")
                break
            # a failed C build runs NumPy instead, with a warning: equal, but not what we test
            problems += [f"{backend} call {call}: {w.message}" for w in seen
                         if "failed" in str(w.message)]
            for i, (g, w) in enumerate(zip(got, _call(eager, arrays, kiln))):
                why = compare(g, w, f"{backend} call {call}, output {i}")
                if why:
                    problems.append(why)
    return problems


def _runs_on_torch(program: Program) -> bool:
    import torch
    try:
        _call(program.function(torch), input_arrays(program, 0), torch)
    except Exception:
        return False
    return True


def _pruned(program: Program) -> Program:
    """Without the lines no output depends on."""
    needed = set(program.outputs)
    kept = []
    for line in reversed(program.lines):
        name, expr = line.split(" = ", 1)
        if name in needed:
            kept.append(line)
            needed |= {w for w in _names(expr)}
    return replace(program, lines=tuple(reversed(kept)))


def _names(expr: str) -> set:
    import re
    return set(re.findall(r"\bv\d+\b", expr))


def minimize(program: Program, fails) -> Program:
    """Greedy shrinking while `fails(program)` holds: fewer outputs, fewer lines (a line's
    name bound to one of its operands instead), smaller input sides."""
    program = _pruned(program)
    changed = True
    while changed:
        changed = False
        candidates = []
        if len(program.outputs) > 1:
            candidates += [replace(program, outputs=(o,)) for o in program.outputs]
        for i, line in enumerate(program.lines):
            name, expr = line.split(" = ", 1)
            for operand in sorted(_names(expr)):
                lines = list(program.lines)
                lines[i] = f"{name} = {operand}"
                candidates.append(replace(program, lines=tuple(lines)))
        for k, (shape, dtype) in enumerate(program.inputs):
            for d, side in enumerate(shape):
                for smaller in sorted({1, 2, side // 2, side - 1}):
                    if 0 < smaller < side:
                        inputs = list(program.inputs)
                        inputs[k] = (shape[:d] + (smaller,) + shape[d + 1:], dtype)
                        candidates.append(replace(program, inputs=tuple(inputs)))
        for candidate in candidates:
            candidate = _pruned(candidate)
            if candidate != program and _runs_on_torch(candidate) and fails(candidate):
                program, changed = candidate, True
                break
    return _collapse(program)


def _collapse(program: Program) -> Program:
    """Lines `vN = vM` folded into their uses."""
    import re
    lines, rename = [], {}
    for line in program.lines:
        name, expr = line.split(" = ", 1)
        expr = re.sub(r"\bv\d+\b", lambda m: rename.get(m.group(0), m.group(0)), expr)
        if re.fullmatch(r"v\d+", expr):
            rename[name] = expr
        else:
            lines.append(f"{name} = {expr}")
    outputs = tuple(rename.get(o, o) for o in program.outputs)
    return Program(program.inputs, tuple(lines), outputs)


def _category(problem: str) -> str:
    """What failed, without the call and output numbers: 'eager vs torch', 'c', 'numpy'."""
    return problem.split(" call")[0].split(",")[0].split(":")[0]


def main(first: int, count: int, threaded: bool = False, focus: str = "all") -> None:
    """Seeds first.. first+count-1, each failure printed minimized. `threaded`: every C loop
    that can be shared among threads is (PARALLEL_MIN 0, two threads); give it a cache
    directory of its own, the lowered programs differ."""
    os.environ["KILN_KERNEL_CHOICE"] = "c"      # every generated kernel runs: no NumPy trials
    if threaded:
        import kiln.codegen.c as c_codegen
        c_codegen.PARALLEL_MIN = 0
        kiln.set_num_threads(2)
    found = 0
    for seed in range(first, first + count):
        if (seed - first) % 250 == 0:
            print(f"... seed {seed}", flush=True)
        program = generate(seed, focus)
        try:
            problems = check(program, seed)
        except Exception as e:
            problems = [f"check raised {type(e).__name__}: {e}"]
        if not problems:
            continue
        found += 1
        print(f"=== seed {seed}: {problems[0]}", flush=True)

        def fails(p, seed=seed, category=_category(problems[0])):
            try:
                return any(_category(why) == category for why in check(p, seed))
            except Exception:
                return False
        small = minimize(program, fails)
        print(small, flush=True)
        print("\n".join(check(small, seed)[:3]), flush=True)
    print(f"seeds {first}..{first + count - 1}: {found} failing", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), "--threaded" in sys.argv,
         "masks" if "--masks" in sys.argv else "all")
