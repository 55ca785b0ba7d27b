"""Random programs that alias memory and write in place: compiled vs eager vs PyTorch.

`generate(seed)` draws Python source (run in a fresh namespace with `torch` bound to kiln or
to PyTorch) for a function `f` and the way its arguments are made (`make(torch, data)`):

* *arguments that share memory*: one tensor passed twice, two overlapping slices of one base,
  a base and its transpose or one of its rows, disjoint rows, a global sharing an argument's
  memory, non-contiguous arguments (transposed, sliced with a step), an expanded (zero-stride)
  argument the function only reads;
* *in-place writes* to arguments and to views of them (`add_`, `mul_`, `zero_`, `clamp_`,
  `copy_`, `masked_fill_`, `index_add_` and setitem with duplicate indices, `out=`), each
  followed by reads of the base or of another view (read-after-write order);
* *state* written under `no_grad` (an EMA buffer, `p.data.clamp_` on a parameter);
* *autograd*: writes to views of a tensor computed from a parameter, and to a tensor an op
  saved for its backward (PyTorch raises "modified by an inplace operation" at backward);
* *returns*: an argument, a view of one, the same tensor twice, an intermediate and a view of
  it.

`check(case)` calls the function five times, eagerly in kiln, compiled in kiln and in PyTorch,
twice over: with the arguments' contents replaced in place between calls, and with new
arguments each call. After each call the caller adds 1 to every returned float tensor not
requiring grad (a write the arguments see exactly where the returned tensor is a view of
them) and calls backward on the sum of those requiring grad. It compares per call: the outputs,
the arguments and bases after the call and after the caller's write, the parameter's `.grad`,
which arguments' version counters moved, which returned tensors share memory with which base
and with each other, and any exception's type. Compiled must equal eager exactly in all of
these (values to 1e-5), or run eagerly with a warning that says why; eager must equal PyTorch
(reported apart: an eager difference is not a compiler bug).

`python -m tests.fuzz_alias FIRST COUNT` sweeps seeds and prints the failing ones.
"""

from __future__ import annotations

import collections
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

CALLS = 5
MODES = ("in place", "replaced")


@dataclass
class Case:
    """A function `f` and `make(torch, data) -> (bases, args)` in `source`; `shapes` of the
    arrays `data` holds (new ones before each call)."""
    name: str
    source: str
    shapes: list
    notes: list = field(default_factory=list)

    def __str__(self) -> str:
        return f"case {self.name}:\n{self.source}"


# ------------------------------------------------------------------------------ running


def _storage(lib, t) -> int:
    return t.untyped_storage().data_ptr()


def _version(lib, t) -> int:
    return t._version if lib.__name__ == "torch" else t._version_number


def _value(t):
    if t is None:
        return None
    return np.array(t.detach().numpy(), copy=True)


def _call(case: Case, lib, compiled: bool, mode: str, seed: int):
    """Per call, a record of what the caller can see (`check`'s docstring); the compiled
    function's entries."""
    import kiln
    ns = {"__name__": f"alias_fuzz_{case.name}", "torch": lib}
    exec(compile(case.source, f"<alias case {case.name}>", "exec", dont_inherit=True), ns)
    rng = np.random.default_rng(seed)

    def data():
        return [rng.uniform(-1, 1, s).astype(np.float32) for s in case.shapes]

    bases, args = ns["make"](lib, data())
    fn = kiln.compile(ns["f"]) if compiled else ns["f"]
    records = []
    for i in range(CALLS):
        if i and mode == "replaced":
            bases, args = ns["make"](lib, data())
        elif i:
            with lib.no_grad():
                for b, d in zip(bases, data()):
                    b.copy_(lib.tensor(d))
        tensors = [a for a in args if isinstance(a, lib.Tensor)]
        before = [_version(lib, a) for a in tensors]
        record = {}
        try:
            result = fn(*args)
        except Exception as e:          # noqa: BLE001 - compared by type with the others
            record["raised"] = type(e).__name__
            records.append(record)
            continue
        outs = [o for o in (result if isinstance(result, tuple) else (result,))
                if isinstance(o, lib.Tensor)]
        record["out"] = [_value(o) for o in outs]
        # read before the caller's write below: a view of memory the call wrote through
        # another view (or its base) takes its history anew when read, as PyTorch's
        record["requires grad (out, args)"] = ([o.requires_grad for o in outs],
                                               [a.requires_grad for a in tensors])
        record["args"] = [_value(a) for a in tensors]
        record["bases"] = [_value(b) for b in bases]
        record["versions moved"] = [_version(lib, a) > v for a, v in zip(tensors, before)]
        places = [_storage(lib, b) for b in bases]
        record["out shares base"] = [[j for j, p in enumerate(places)
                                      if o.numel() and p == _storage(lib, o)] for o in outs]
        record["out shares out"] = [[j for j, p in enumerate(outs)
                                     if o.numel() and _storage(lib, p) == _storage(lib, o)]
                                    for o in outs]
        with lib.no_grad():
            for j, o in enumerate(outs):
                if o.dtype == lib.float32 and not o.requires_grad:
                    try:
                        o.add_(1.0)
                    except Exception as e:      # noqa: BLE001 - an expanded view
                        record[f"writing output {j} raised"] = type(e).__name__
        record["bases after the caller's write"] = [_value(b) for b in bases]
        wants = [o for o in outs if o.requires_grad]
        if wants:
            try:
                sum(o.sum() for o in wants).backward()
            except Exception as e:      # noqa: BLE001 - compared by type with the others
                # (PyTorch accumulates the gradients it reached before the error: not compared)
                record["backward raised"] = type(e).__name__
        if "backward raised" not in record:
            record["grads"] = [_value(p.grad) for p in ns.get("PARAMS", [])]
        records.append(record)
    return records, fn


def _differences(a, b, path="") -> list:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}{k}: only in the first" for k in a.keys() - b.keys()]
        out += [f"{path}{k}: only in the second" for k in b.keys() - a.keys()]
        for k in a.keys() & b.keys():
            out += _differences(a[k], b[k], f"{path}{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        if a.shape != b.shape:
            return [f"{path}: shape {a.shape} vs {b.shape}"]
        if not np.allclose(a, b, rtol=1e-5, atol=1e-5, equal_nan=True):
            return [f"{path}: {np.round(a.ravel()[:6], 4)} vs {np.round(b.ravel()[:6], 4)}"]
        return []
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) or a != b:
        return [f"{path}: {_short(a)} vs {_short(b)}"]
    return []


def _short(a) -> str:
    return f"{np.round(a.ravel()[:6], 4)}" if isinstance(a, np.ndarray) else repr(a)


@dataclass
class Outcome:
    problems: list          # compiled vs eager in kiln: compiler bugs
    eager_vs_torch: list    # eager kiln vs PyTorch: reported apart
    kinds: list             # per mode: "replayed", "eager" (with a warning) or "traced only"
    warned: list


def check(case: Case, seed: int = 0) -> Outcome:
    import torch

    import kiln
    problems, eager_vs_torch, kinds, told = [], [], [], []
    for mode in MODES:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            mine, _ = _call(case, kiln, False, mode, seed)
            twin, fn = _call(case, kiln, True, mode, seed)
        told += [str(w.message) for w in seen if "kiln.compile" in str(w.message)]
        theirs, _ = _call(case, torch, False, mode, seed)
        replays = sum(e.calls for e in fn.entries.values() if e.program is not None)
        eager = any(e.program is None for e in fn.entries.values())
        kinds.append("eager" if eager else "replayed" if replays else "traced only")
        for i, (e, c, t) in enumerate(zip(mine, twin, theirs)):
            problems += [f"{mode}, call {i}: {d}" for d in _differences(c, e)]
            eager_vs_torch += [f"{mode}, call {i}: {d}" for d in _differences(e, t)]
    if problems and not told:
        problems.append("(no warning: a wrong compiled answer)")
    return Outcome(problems, eager_vs_torch, kinds, told)


# ---------------------------------------------------------------------------- generating

# how the arguments share memory: (argument expressions of the base `b` (and `c`), which
# arguments the function may write, which are 2-d, which are read only)
ARGUMENTS = {
    "one":          (["b"], [0]),
    "twice":        (["b", "b"], [0, 1]),
    "overlapping":  (["b[:3]", "b[1:]"], [0, 1]),
    "transposed":   (["b", "b.t()"], [0, 1]),
    "row":          (["b", "b[1]"], [0, 1]),
    "disjoint":     (["b[:2]", "b[2:]"], [0, 1]),
    "two bases":    (["b", "c"], [0, 1]),
    "global":       (["b"], [0]),          # G is b[1:] (a global sharing its memory)
    "noncontig":    (["b.t()", "c[::2]"], [0, 1]),
    "expanded":     (["b", "c[:1].expand(4, 4)"], [0]),
    "zero-d":       (["b", "b[1, 2]"], [0, 1]),
}

# views a write may go through, of an argument `{x}` of shape [4, 4] or [3, 4] or [2, 4]
VIEWS = ["{x}", "{x}[1:]", "{x}.t()", "{x}.view(-1)[::2]", "{x}[:, 1]", "{x}[0]",
         "{x}.unsqueeze(0)", "{x}[..., ::2]"]
CONTIGUOUS_ONLY = {"{x}.view(-1)[::2]"}

# in-place writes to a view `{v}` (`{r}` is a 0-d read of another argument)
WRITES = [
    "{v}.add_({r})", "{v}.mul_(0.5)", "{v}.zero_()", "{v}.clamp_(-0.3, 0.4)",
    "{v}.copy_({v} * 2 + {r})", "{v}.masked_fill_({v} > 0.2, -1.0)",
    "torch.add({v}, {r}, out={v})", "{v}.sub_({v}.flip(0))", "{v}.fill_({r})",
    "{v}.neg_()", "{v}.addcmul_({v}, {v}, value=0.25)",
]
ROW_WRITES = [      # on a view with at least 2 rows
    "{v}.index_add_(0, torch.tensor([0, 1, 0]), {v}[:3].clone() * 0 + 1.5)",
    "{v}[torch.tensor([0, 1, 0])] = {r}",
    "{v}[torch.tensor([1, 0, 1])] += 1.0",
    "{v}.scatter_(0, torch.zeros_like({v}[:1], dtype=torch.long), {r}.expand_as({v}[:1]))",
]

READS = ["{x}.sum()", "{x}.mean(0)", "({x} * {x}).sum(-1)", "{x}.t()[0] * 2", "{x}.amax()",
         "{x}[1:].cumsum(0)"]

RETURNS = ["{x}", "{x}[1:]", "{x}.t()", "{x}.view(-1) if {x}.is_contiguous() else {x}",
           "{x}[0]", "{x}.unsqueeze(0)"]


def _make_source(pattern: str) -> tuple:
    exprs, writable = ARGUMENTS[pattern]
    shapes = [(4, 4)] + ([(4, 4)] if pattern in ("two bases", "noncontig", "expanded") else [])
    lines = ["def make(torch, d):", "    global G, W, P, EMA, PARAMS",
             "    W = torch.full((4,), 0.7, requires_grad=True)",
             "    P = torch.nn.Parameter(torch.linspace(-1, 1, 4))",
             "    EMA = torch.zeros(4)", "    PARAMS = [W, P]", "    b = torch.tensor(d[0])"]
    if len(shapes) > 1:
        lines.append("    c = torch.tensor(d[1])")
    lines.append("    G = b[1:]" if pattern == "global" else "    G = None")
    bases = "[b, c]" if len(shapes) > 1 else "[b]"
    lines.append(f"    return {bases}, [{', '.join(exprs)}]")
    return "\n".join(lines) + "\n", shapes, writable


def _view_of(rng, name: str, ndim: int, contiguous: bool) -> str:
    if ndim == 0:
        return name
    if ndim == 1:
        return str(rng.choice([name, f"{name}[1:]", f"{name}[::2]", f"{name}.unsqueeze(0)"]))
    views = [v for v in VIEWS if contiguous or v not in CONTIGUOUS_ONLY]
    return str(rng.choice(views)).format(x=name)


def generate(seed: int) -> Case:
    rng = np.random.default_rng(seed)
    pattern = str(rng.choice(list(ARGUMENTS)))
    make, shapes, writable = _make_source(pattern)
    exprs = ARGUMENTS[pattern][0]
    names = [f"x{i}" for i in range(len(exprs))]
    ndim = {n: (0 if e.endswith("[1, 2]") else 1 if e.endswith("[1]") else 2)
            for n, e in zip(names, exprs)}
    contiguous = {n: e in ("b", "c", "b[:2]", "b[2:]", "b[1:]", "b[:3]")
                  for n, e in zip(names, exprs)}
    body, notes = [], [pattern]
    grad = rng.random() < 0.3
    state = rng.random() < 0.25
    if grad:
        body.append("    h = x0 * W")
        names_w = names + ["h"]
        ndim["h"], contiguous["h"] = ndim["x0"], True
        notes.append("grad")
    else:
        names_w = list(names)
    if pattern == "global":
        names_w.append("G")
        ndim["G"], contiguous["G"] = 2, True
    writers = [n for i, n in enumerate(names) if i in writable] + \
        [n for n in names_w if n not in names]
    locals_ = []
    for k in range(int(rng.integers(1, 5))):
        what = rng.random()
        if what < 0.55:
            target = str(rng.choice(writers))
            v = _view_of(rng, target, ndim[target], contiguous[target])
            r = str(rng.choice(names_w))
            r = f"{r}.sum() * 0.1" if ndim[r] else f"{r} * 0.1"
            choices = WRITES + (ROW_WRITES if ndim[target] == 2 and v in (
                target, f"{target}[1:]", f"{target}.t()") else [])
            w = str(rng.choice(choices))
            body.append("    " + w.format(v=v, r=r))
        elif what < 0.8:
            src = str(rng.choice(names_w))
            if ndim[src] < 2:
                expr = f"{src} * 3"
            else:
                expr = str(rng.choice(READS)).format(x=src)
            body.append(f"    r{k} = {expr}")
            locals_.append(f"r{k}")
        else:
            src = str(rng.choice(names_w))
            expr = f"{src} * 2" if ndim[src] < 2 else \
                f"{_view_of(rng, src, ndim[src], contiguous[src])} * 2"
            body.append(f"    r{k} = {expr}")
            locals_.append(f"r{k}")
    if grad and rng.random() < 0.4:
        # a tensor an op saved for its backward, written afterwards: PyTorch refuses backward
        body.append("    s = h.sigmoid()")
        body.append("    s.mul_(2)" if rng.random() < 0.6 else "    r_s = s * 2")
        locals_.append("s")
    if state:
        body.insert(0, "    with torch.no_grad():\n        EMA.mul_(0.9).add_(x0.mean() * 0.1)"
                    "\n        P.data.clamp_(-0.5, 0.5)")
        locals_.append("EMA * 1")
        notes.append("state")
    returned = []
    for _ in range(int(rng.integers(1, 4))):
        pick = rng.random()
        if pick < 0.4 and locals_:
            returned.append(str(rng.choice(locals_)))
        elif pick < 0.8:
            src = str(rng.choice(names_w))
            returned.append(src if ndim[src] < 2 else
                            str(rng.choice(RETURNS)).format(x=src))
        else:
            returned.append(returned[-1] if returned else names[0])
    if grad:
        returned.append("(h * P).sum()")
    body.append("    return " + ", ".join(returned))
    header = "G = W = P = EMA = None\nPARAMS = []\n"
    source = header + make + "\n\ndef f(" + ", ".join(names) + "):\n" + "\n".join(body) + "\n"
    return Case(f"seed {seed}", source, shapes, notes)


def sweep(first: int, count: int) -> int:
    tally, failing, eager_differs = collections.Counter(), 0, 0
    for seed in range(first, first + count):
        case = generate(seed)
        try:
            outcome = check(case, seed)
        except Exception as e:          # noqa: BLE001 - a sweep reports and goes on
            outcome = Outcome([f"{type(e).__name__}: {e}"], [], [], [])
        if outcome.problems:
            failing += 1
            print(f"FAILING {case}\n  " + "\n  ".join(outcome.problems[:12]), flush=True)
        if outcome.eager_vs_torch:
            eager_differs += 1
            print(f"eager differs from torch, seed {seed}: {outcome.eager_vs_torch[0]}",
                  flush=True)
        tally.update(outcome.kinds)
    print(f"{count} seeds, {failing} failing (compiled != eager), {eager_differs} where eager "
          f"kiln differs from torch; runs: {dict(tally)}")
    return failing


if __name__ == "__main__":
    sys.exit(1 if sweep(int(sys.argv[1]), int(sys.argv[2])) else 0)
