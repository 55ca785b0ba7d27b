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
from dataclasses import dataclass, replace

import numpy as np

import kiln

DTYPES = ["float32", "float64", "int32", "int64", "bool", "uint8", "int8"]
FLOATS = ("float32", "float64")
MAX_NUMEL = 4096
FILLS = {"float": ["-5.0", "0.0", "1.5", "-math.inf"], "int": ["-5", "0", "7"],
         "bool": ["True", "False"]}


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
    if ndim >= 2 and rng.random() < 0.4:           # 16xN or Nx16: the unrolled row kernels
        shape[-2:] = [16, int(rng.integers(1, 17))][::1 if rng.random() < 0.5 else -1]
    while math.prod(shape) > cap:
        shape[int(np.argmax(shape))] //= 2
    shapes = [tuple(shape)]
    for _ in range(int(rng.integers(0, 3))):
        r = rng.random()
        if r < 0.5:
            other = list(shape)
        elif r < 0.8:                                 # broadcasts: some dims 1, some dropped
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

    def ndim(self, name: str) -> int:
        return self.values[name].ndim

    def choice(self, options):
        return options[int(self.rng.integers(0, len(options)))]

    def line(self) -> str | None:
        kind = self.choice(["unary", "unary", "compare", "logic", "where", "fill", "clamp",
                            "cast", "binary", "binary", "reduce", "reduce", "reduce", "move",
                            "move", "chain"])
        return getattr(self, f"_{kind}")()

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
        c = self.choice(FILLS[_kind(self.dtype(x))][:3])
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
        c = self.choice(FILLS[_kind(self.dtype(x))])
        return self.choice(["torch.where({m}, {x}, {y})", "torch.where({m}, {x}, {c})",
                            "torch.where(~{m}, {c}, {x})"]).format(m=m, x=x, y=y, c=c)

    def _fill(self):
        m = self.pick(["bool"])
        if m is None:
            return None
        x = self.partner(m)
        c = self.choice(FILLS[_kind(self.dtype(x))])
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
        d = self._dim(x)
        return self.choice([
            f"{x}.masked_fill((({x} == -5.0).all(dim={d}, keepdim=True)), 0.0)",
            f"({x} * {m}).sum(dim={d}, keepdim=True) / {m}.sum(dim={d}, keepdim=True)"
            f".clamp_min(1)",
            f"{x}.masked_fill(~{m}, -math.inf).softmax({d}).nan_to_num(0.0)",
            f"torch.where({m}, {x}, -1e9).amax(dim={d}) + {m}.any(dim={d}).float()",
            f"{x} - {x}.amax(dim={d}, keepdim=True)"])


def _broadcasts(a: tuple, b: tuple) -> bool:
    return all(x == y or x == 1 or y == 1 for x, y in zip(a[::-1], b[::-1]))


def generate(seed: int) -> Program:
    """A program of 1..10 lines that PyTorch runs, with its inputs and returned names."""
    import torch
    rng = np.random.default_rng(seed)
    dtypes = [str(rng.choice(DTYPES)) for _ in range(3)]
    if rng.random() < 0.5:                  # a float and a mask: the pattern of masking code
        dtypes[:2] = [str(rng.choice(FLOATS)), "bool"]
    cap = MAX_NUMEL if rng.random() < 0.85 else 8 * MAX_NUMEL   # some past the C tiles
    shapes = _input_shapes(rng, cap)
    inputs = tuple((s, d) for s, d in zip(shapes, dtypes))
    program = Program(inputs, (), ())
    values = {f"v{i}": torch.from_numpy(a) for i, a in enumerate(input_arrays(program, seed))}
    drawer = _Drawer(rng, values, cap)
    lines = []
    for _ in range(200):
        if len(lines) >= int(rng.integers(1, 11)) and lines:
            break
        expr = drawer.line()
        if expr is None:
            continue
        try:
            out = eval(expr, {"torch": torch, "math": math}, dict(values))
        except Exception:
            continue
        if not isinstance(out, torch.Tensor) or out.numel() > cap:
            continue
        name = f"v{len(values)}"
        values[name] = out
        lines.append(f"{name} = {expr}")
    made = [f"v{i}" for i in range(len(inputs), len(values))]
    outputs = [n for n in made[:-1] if rng.random() < 0.2] + made[-1:]
    return Program(inputs, tuple(lines), tuple(outputs))


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
                got = _call(compiled, arrays, kiln)
            except Exception as e:
                problems.append(f"{backend} call {call}: raised {type(e).__name__}: {e}")
                break
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


def main(first: int, count: int, threaded: bool = False) -> None:
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
        program = generate(seed)
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
    main(int(sys.argv[1]), int(sys.argv[2]), "--threaded" in sys.argv)
