"""Random Python worlds that change between calls: a compiled call must never replay stale.

`generate(seed)` draws a small world: Python source (run in a fresh module namespace, as
`exec_world` in test_compile_guards.py does) that builds some state and a function `f(x)`
reading one value of it along a random *path* (1-3 holders deep: a global, a closure cell,
another module's attribute or a helper function there, an argument; inside it plain objects,
dataclasses, namespaces, slots, Modules, buffers, submodules, an optimizer's param_groups,
class attributes read through the class, an instance, a subclass or `type(self)`, properties,
static and class methods, methods reading `self.x` or a global, list / dict / tuple items,
`functools.partial` arguments, lambdas and bound methods held in containers, default
arguments), and using it as a scalar, a dim, a shape, a branch condition, a tensor, a list
(`len`, iteration, `in`), an enum member or a module's `training` flag. Between calls it
applies random *mutations* (rebind, mutate in place, append / pop, shadow a class attribute on
the instance, delete the shadow, replace a method or a property on the class, change a
default, toggle train / eval, switch grad mode), or none.

`check(world)` runs the world eagerly and compiled (the C backend; Triton's for one seed in
eight) and compares every call's result and the value read afterwards. Each compiled call is
counted as a replay, a trace or an eager run; a trace or eager run after a call that changed
nothing is needless (`needless`), which is slow, not wrong. A difference is a stale answer.

`python -m tests.fuzz_guards FIRST COUNT` sweeps seeds and prints each failing world's source.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import io
import re
import sys
import types
import warnings
from dataclasses import dataclass, field

import numpy as np

import kiln
import kiln.nn as nn
import kiln.nn.functional as F
from kiln.compiler import guards
from tests.test_compile_guards import observe, same

CALLS = 5

# ----------------------------------------------------------------------------- leaves
# kind -> (values (source), how f uses the value `v`, in-place mutations of `{o}`)

_TENSORS = ["kiln.tensor([1.0, -2.0, 0.5, 3.0])", "kiln.tensor([0.0, 1.0, 2.0, 3.0])",
            "kiln.tensor([-1.0, -1.0, 4.0, 0.25])"]
LEAVES = {
    "scale": (["0.5", "2.0", "-1.5", "3.0", "2"], ["x * v + 1"], []),
    "dim": (["0", "1"], ["x.sum(v)", "x.softmax(v)"], []),
    "shape": (["2", "3", "4", "6"], ["x.reshape(v, -1)"], []),
    "flag": (["True", "False"], ["(x.tanh() if v else x.relu())"], []),
    "mode": (["'sum'", "'mean'"], ["(x.sum() if v == 'sum' else x.mean())"], []),
    "tensor": (_TENSORS, ["x + v", "(x * v).sum(1)"], ["{o}.mul_(2.0)", "{o}.add_(1.0)"]),
    "list": (["[1.0, 2.0]", "[3.0]", "[0.5, 3.0, 1.0]"],
             ["x * len(v)", "x * sum(v)", "(x * 2.0 if 3.0 in v else x - 1.0)",
              "x * [a for a in v][-1]"],
             ["{o}.append(3.0)", "{o}.pop(0)", "{o}[:1] = [5.0]"]),
    "enum": (["Color.RED", "Color.BLUE"], ["(x.exp() if v is Color.RED else x.sin())"], []),
    "module": (["nn.Identity()", "nn.Identity().eval()"],
               ["(x.tanh() if v.training else x.relu())"], ["{o}.eval()", "{o}.train()"]),
}
PRELUDE = ("import dataclasses, enum, functools, sys, types\n"
           "class Color(enum.Enum):\n    RED = 1\n    BLUE = 2\n"
           "def _pick(v, *rest):\n    return v\n")


# ----------------------------------------------------------------------------- holders
# A holder wraps an inner value. `make` builds it from the inner value's source; `get` reads the
# inner value from an expression `{o}` for the holder; `set` rebinds the inner value to `{n}`;
# `extra` are other mutations (shadow, delete, replace a method); `setup` defines its classes.
# Every `{k}` is the holder's level, so two holders of one kind get two classes.

@dataclass(frozen=True)
class Holder:
    name: str
    make: str
    get: str
    set: str | None = None
    extra: tuple = ()
    setup: str = ""
    leaves: tuple | None = None       # the leaf kinds it may hold directly (None: any)


HOLDERS = [
    Holder("object", "Box{k}({i})", "{o}.v", "{o}.v = {n}",
           ("{o}.w = 1",), "class Box{k}:\n    def __init__(self, v):\n        self.v = v\n"),
    Holder("dataclass", "DC{k}({i})", "{o}.v", "{o}.v = {n}", (),
           "@dataclasses.dataclass\nclass DC{k}:\n    v: object\n"),
    Holder("namespace", "types.SimpleNamespace(v={i}, w=0)", "{o}.v", "{o}.v = {n}",
           ("{o}.w = 5",)),
    Holder("slots", "Sl{k}({i})", "{o}.v", "{o}.v = {n}", ("{o}.w = 2",),
           "class Sl{k}:\n    __slots__ = ('v', 'w')\n"
           "    def __init__(self, v):\n        self.v = v\n"),
    Holder("module attribute", "Mo{k}({i})", "{o}.v", "{o}.v = {n}", ("{o}.eval()",),
           "class Mo{k}(nn.Module):\n    def __init__(self, v):\n        super().__init__()\n"
           "        self.v = v\n"),
    Holder("buffer", "Bu{k}({i})", "{o}.v", "{o}.v = {n}", ("{o}.eval()",),
           "class Bu{k}(nn.Module):\n    def __init__(self, v):\n        super().__init__()\n"
           "        self.register_buffer('v', v)\n", ("tensor",)),
    Holder("submodule attribute", "Pa{k}({i})", "{o}.sub.v", "{o}.sub.v = {n}",
           ("{o}.sub = Su{k}({n})",),
           "class Su{k}(nn.Module):\n    def __init__(self, v):\n        super().__init__()\n"
           "        self.v = v\n"
           "class Pa{k}(nn.Module):\n    def __init__(self, v):\n        super().__init__()\n"
           "        self.sub = Su{k}(v)\n"),
    Holder("param_groups", "kiln.optim.SGD([kiln.zeros(1, requires_grad=True)], lr={i})",
           "{o}.param_groups[0]['lr']", "{o}.param_groups[0]['lr'] = {n}", (), "", ("lr",)),
    Holder("class attribute via the class", "CA{k}", "{o}.v", "{o}.v = {n}", (),
           "class CA{k}:\n    v = {i}\n"),
    Holder("class attribute via an instance", "CI{k}()", "{o}.v", "type({o}).v = {n}",
           ("{o}.v = {n}", "{o}.__dict__.pop('v', None)"), "class CI{k}:\n    v = {i}\n"),
    Holder("class attribute via a subclass", "CS{k}()", "{o}.v", "CB{k}.v = {n}",
           ("CS{k}.v = {n}", "{o}.v = {n}"), "class CB{k}:\n    v = {i}\n"
           "class CS{k}(CB{k}):\n    pass\n"),
    Holder("class attribute via type(self)", "CT{k}()", "{o}.get()", "type({o}).v = {n}",
           ("type({o}).get = lambda self: {n}", "{o}.v = {n}"),
           "class CT{k}:\n    v = {i}\n    def get(self):\n        return type(self).v\n"),
    Holder("property", "Pr{k}({i})", "{o}.v", "{o}._v = {n}",
           ("type({o}).v = property(lambda self: {n})",),
           "class Pr{k}:\n    def __init__(self, v):\n        self._v = v\n"
           "    @property\n    def v(self):\n        return self._v\n"),
    Holder("staticmethod reading a global", "St{k}()", "{o}.get()", "HELD{k} = {n}",
           ("type({o}).get = staticmethod(lambda: {n})",),
           "HELD{k} = {i}\nclass St{k}:\n    @staticmethod\n    def get():\n"
           "        return HELD{k}\n"),
    Holder("classmethod", "Cm{k}()", "{o}.get()", "type({o}).v = {n}",
           ("type({o}).get = classmethod(lambda cls: {n})",),
           "class Cm{k}:\n    v = {i}\n    @classmethod\n    def get(cls):\n"
           "        return cls.v\n"),
    Holder("method reading self.x", "Me{k}({i})", "{o}.get()", "{o}.x = {n}",
           ("type({o}).get = lambda self: {n}", "{o}.get = lambda: {n}"),
           "class Me{k}:\n    def __init__(self, v):\n        self.x = v\n"
           "    def get(self):\n        return self.x\n"),
    Holder("method reading a global", "Mg{k}()", "{o}.get()", "G{k} = {n}",
           ("type({o}).get = lambda self: {n}",),
           "G{k} = {i}\nclass Mg{k}:\n    def get(self):\n        return G{k}\n"),
    Holder("list item", "[0, {i}, 0]", "{o}[1]", "{o}[1] = {n}",
           ("{o}.insert(1, {n})", "{o}.append(7)")),
    Holder("dict item", "{'a': {i}, 'b': 1}", "{o}['a']", "{o}['a'] = {n}",
           ("del {o}['a']; {o}['a'] = {n}", "{o}['c'] = 2")),
    Holder("tuple item", "({i}, 1)", "{o}[0]"),
    Holder("partial argument", "functools.partial(_pick, {i})", "{o}()"),
    Holder("lambda in a dict", "{'fn': (lambda v={i}: v)}", "{o}['fn']()",
           "{o}['fn'] = (lambda v={n}: v)", ("{o}['fn'].__defaults__ = ({n},)",)),
    Holder("bound method in an attribute", "Hb{k}(Rd{k}({i}).get)", "{o}.m()",
           "{o}.m.__self__.x = {n}", ("{o}.m = Rd{k}({n}).get",),
           "class Rd{k}:\n    def __init__(self, v):\n        self.x = v\n"
           "    def get(self):\n        return self.x\n"
           "class Hb{k}:\n    def __init__(self, m):\n        self.m = m\n"),
    Holder("default argument", "gd{k}", "{o}()", "{o}.__defaults__ = ({n},)", (),
           "def gd{k}(v={i}):\n    return v\n"),
]
ROOTS = ["global", "closure", "module attribute", "module function", "argument",
         "record argument"]
# mutations of state the call does not read: a call after them should still replay
HARMLESS = {"{o}.w = 1", "{o}.w = 2", "{o}.w = 5", "{o}.eval()", "{o}.append(7)", "{o}['c'] = 2"}


@dataclass
class World:
    seed: int
    source: str
    read: str                   # the value f reads, as a module-level expression
    mutations: list             # per call: the statements run before it ([] for none)
    grad: list | None           # per call: grad mode (x requires grad), or None
    backend: str = "c"
    path: list = field(default_factory=list)
    harmless: set = field(default_factory=set)      # mutations of state f does not read

    def __str__(self) -> str:
        muts = "\n".join(f"# before call {i}: {'; '.join(m) or '-'}"
                         + ("" if self.grad is None else f"  (grad {self.grad[i]})")
                         for i, m in enumerate(self.mutations))
        return (f"# seed {self.seed}, backend {self.backend}, path {' > '.join(self.path)}\n"
                f"{self.source}{muts}\n")


def _fill(text: str, **parts) -> str:
    for key, value in parts.items():
        text = text.replace("{" + key + "}", value)
    return text


def generate(seed: int) -> World:
    rng = np.random.default_rng(seed)
    pick = lambda seq: seq[int(rng.integers(len(seq)))]       # noqa: E731
    leaf = pick(list(LEAVES) + ["lr"])
    values, uses, in_place = LEAVES["scale" if leaf == "lr" else leaf]
    if leaf == "lr":
        values = ["0.5", "2.0", "3.0"]
    depth = int(rng.integers(1, 4))
    holders = []                # innermost first
    for level in range(depth):
        fits = [h for h in HOLDERS if h.leaves is None if level or leaf != "lr"] + \
            [h for h in HOLDERS if level == 0 and h.leaves is not None and leaf in h.leaves]
        holders.append(pick(fits))

    def build(value: str, upto: int) -> tuple[str, str]:
        """(setup, source) of the value held at level `upto` (0: the leaf) with leaf `value`;
        a class-level holder's setup takes the inner value, so each build has its own names."""
        if upto == 0:
            return "", value
        setup, inner = build(value, upto - 1)
        h = holders[upto - 1]
        k = f"{upto}_{len(built)}"
        built.append(k)
        return setup + _fill(h.setup, k=k, i=inner), _fill(h.make, k=k, i=inner)

    built: list = []
    setup, state = build(values[0], depth)
    # the level names each `set`/`extra` of a holder uses: those of its first build
    names = [f"{lvl}_{lvl - 1}" for lvl in range(1, depth + 1)]

    root = pick(ROOTS)
    src = PRELUDE + setup
    use = pick(uses)
    read_from = lambda o: _chain(holders, o)     # noqa: E731
    args = "x, s" if root.endswith("argument") else "x"
    if root == "global":
        src += f"STATE = {state}\ndef f({args}):\n    v = {read_from('STATE')}\n" \
               f"    return {use}\n"
        top, rebind = "STATE", "STATE = {n}"
    elif root == "argument":
        src += f"STATE = {state}\ndef f({args}):\n    v = {read_from('s')}\n" \
               f"    return {use}\n"
        top, rebind = "STATE", "STATE = {n}"
    elif root == "record argument":     # a batch-like object: a tensor, the state, a history
        src += (f"class Rec:\n    def __init__(self, state):\n        self.t = kiln.ones(1)\n"
                f"        self.state = state\n        self.history = []\n"
                f"REC = Rec({state})\ndef f({args}):\n    v = {read_from('s.state')}\n"
                f"    return ({use}) * s.t\n")
        top, rebind = "REC.state", "REC.state = {n}"
    elif root == "closure":
        src += (f"def _build():\n    state = {state}\n    def f({args}):\n"
                f"        v = {read_from('state')}\n        return {use}\n"
                "    def rebind(value):\n        nonlocal state\n        state = value\n"
                "    return f, rebind, (lambda: state)\nf, _rebind, _cell = _build()\n")
        top, rebind = "_cell()", "_rebind({n})"
    else:
        module = f"guard_fuzz_cfg_{seed}"
        src += (f"cfg = types.ModuleType('{module}')\nsys.modules['{module}'] = cfg\n"
                f"cfg.state = {state}\n")
        if root == "module attribute":
            src += f"def f({args}):\n    v = {read_from('cfg.state')}\n    return {use}\n"
        else:
            helper = f"def read():\n    return {read_from('state')}\n"
            src += (f"exec({helper!r}, cfg.__dict__)\n"
                    f"def f({args}):\n    v = cfg.read()\n    return {use}\n")
        top, rebind = "cfg.state", "cfg.state = {n}"

    # the mutations: rebinding any level, each holder's own, the leaf's in-place ones
    def fresh(upto: int) -> str:
        """A new value for level `upto`, with a different leaf (setup added to the source)."""
        nonlocal src
        s, value = build(pick(values[1:]), upto)
        src_extra.append(s)
        return value

    src_extra: list = []
    options = []
    harmless = {"REC.history.append(1)"}
    o = top
    for level in range(depth, 0, -1):       # outermost holder first
        h = holders[level - 1]
        k = names[level - 1]
        if level == depth:
            options.append(_fill(rebind, n=fresh(depth)))
        if h.set is not None:
            options.append(_fill(h.set, o=o, k=k, n=fresh(level - 1)))
        for e in h.extra:
            options.append(_fill(e, o=o, k=k, n=fresh(level - 1)))
            if e in HARMLESS:
                harmless.add(options[-1])
        o = _fill(h.get, o=o)
    options += [_fill(m, o=o) for m in in_place]
    if root == "record argument":
        options.append("REC.history.append(1)")
    src = src + "".join(src_extra)
    mutations = [[]]
    for _ in range(CALLS - 1):
        if rng.random() < 0.35 or not options:
            mutations.append([])
        else:
            mutations.append([pick(options) for _ in range(int(rng.integers(1, 3)))])
    grad = [bool(rng.random() < 0.5) for _ in range(CALLS)] if rng.random() < 0.2 else None
    backend = "triton" if seed % 8 == 7 else "c"
    if root.endswith("argument"):
        src += f"# f is called as f(x, {'STATE' if root == 'argument' else 'REC'})\n"
    return World(seed, src, read_from(top), mutations, grad, backend,
                 [root] + [h.name for h in reversed(holders)] + [leaf], harmless)


def _chain(holders: list, o: str) -> str:
    for h in reversed(holders):
        o = _fill(h.get, o=o)
    return o


# ----------------------------------------------------------------------------- the checker

@dataclass
class Outcome:
    seen: list
    after: object
    kinds: list                 # per compiled call: "replay", "trace", "eager" or "raised"
    reasons: list               # eager and trace reasons


def _run(world: World, compiled: bool) -> Outcome:
    kiln.manual_seed(0)
    ns = {"__name__": f"guard_fuzz_world_{world.seed}", "kiln": kiln, "nn": nn, "F": F,
          "np": np}
    modules = set(sys.modules)
    try:
        exec(compile(world.source, "<world>", "exec", dont_inherit=True), ns)
        fn = kiln.compile(ns["f"], backend=world.backend) if compiled else ns["f"]
        x = kiln.tensor(np.arange(12, dtype=np.float32).reshape(3, 4) / 7 - 0.5,
                        requires_grad=world.grad is not None)
        seen, kinds, reasons = [], [], []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i in range(CALLS):
                for statement in world.mutations[i]:
                    try:
                        exec(statement, ns)
                    except Exception as e:
                        seen.append(("mutation raised", type(e).__name__))
                args = (x, ns["STATE"]) if "# f is called as f(x, STATE)" in world.source \
                    else (x, ns["REC"]) if "# f is called as f(x, REC)" in world.source else (x,)
                before = _counts(fn) if compiled else None
                why = _why_not_replayed(fn) if compiled and all(
                    m in world.harmless for m in world.mutations[i]) else None
                out = io.StringIO()
                mode = True if world.grad is None else world.grad[i]
                try:
                    with contextlib.redirect_stdout(out), kiln.set_grad_enabled(mode):
                        result = fn(*args)
                    seen.append(("ok", _observe(result), out.getvalue()))
                except Exception as e:
                    seen.append(("raised", type(e).__name__))
                if compiled and seen[-1][0] == "raised":   # (as eager raised: not counted)
                    kinds.append("raised")
                elif compiled:
                    kinds.append(_kind(fn, before, reasons))
                    if kinds[-1] == "trace" and why is not None:
                        reasons[-1:] = [f"trace: {why}"]
        try:
            after = _observe(eval(world.read, ns))
        except Exception as e:
            after = ("raised", type(e).__name__)
        return Outcome(seen, after, kinds, reasons)
    finally:
        for name in set(sys.modules) - modules:
            if name.startswith("guard_fuzz_cfg_"):
                del sys.modules[name]


def _observe(value):
    """`observe`, with what two copies of a world hold as different objects made comparable:
    an enum member by name, a module by its training flag, another object by its type."""
    if isinstance(value, enum.Enum):
        return ("enum", value.name)
    if isinstance(value, nn.Module):
        return ("module", value.training)
    if isinstance(value, list):
        return ("list", [_observe(v) for v in value])
    if isinstance(value, (kiln.Tensor, int, float, str, tuple, dict)):
        return observe(value)
    return ("object", type(value).__name__)       # (a class attribute read as a bound method)


def _why_not_replayed(fn) -> str:
    """The first guard of the newest entry that fails now, or that another key was made."""
    if not fn.entries:
        return "the first call"
    failed = guards.first_failure(list(fn.entries.values())[-1].guards)
    if failed is None:
        return "a new guard key (the arguments' structure or a record's fields)"
    return re.sub(r"\d+", "N", failed.describe())


def _counts(fn) -> tuple:
    return (len(fn.entries),
            sum(e.calls for e in fn.entries.values() if e.program is not None))


def _kind(fn, before: tuple, reasons: list) -> str:
    entries, replays = _counts(fn)
    if entries > before[0]:
        new = list(fn.entries.values())[-1]
        if new.program is None:
            reasons.append(f"eager: {new.eager_reason}")
            return "eager"
        reasons.append("trace")
        return "trace"
    if replays > before[1]:
        return "replay"
    reasons.append("eager: an eager entry or the recompile limit")
    return "eager"


def check(world: World) -> tuple[list, Outcome]:
    """(problems, compiled outcome): where compiled differs from eager."""
    eager = _run(world, False)
    compiled = _run(world, True)
    problems = []
    for i, (e, c) in enumerate(zip(eager.seen, compiled.seen)):
        try:
            same(e, c, f"call {i}")
        except AssertionError as err:
            problems.append(_first_line(err))
    if len(eager.seen) != len(compiled.seen):
        problems.append(f"{len(eager.seen)} eager results, {len(compiled.seen)} compiled")
    try:
        same(eager.after, compiled.after, "value read after the calls")
    except AssertionError as err:
        problems.append(_first_line(err))
    return problems, compiled


def _first_line(err: AssertionError) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[:4])


def needless(world: World, outcome: Outcome) -> list:
    """The compiled calls after the first that traced or ran eagerly though nothing they read
    changed (no mutation, or only harmless ones)."""
    return [i for i in range(1, CALLS) if all(m in world.harmless for m in world.mutations[i]) and
            (world.grad is None or world.grad[i] == world.grad[i - 1]) and
            outcome.kinds[i] in ("trace", "eager")]


def sweep(first: int, count: int) -> int:
    tally = collections.Counter()
    needless_paths = collections.Counter()
    reasons = collections.Counter()
    failing = 0
    for seed in range(first, first + count):
        world = generate(seed)
        problems, outcome = check(world)
        if problems:
            failing += 1
            print(f"DIFFERENT {world}" + "\n".join(problems) + "\n", flush=True)
            tally["DIFFERENT"] += 1
        elif "eager" in outcome.kinds:
            tally["equal, some calls eager"] += 1
        elif outcome.kinds.count("trace") > 1:
            tally["equal, retraced"] += 1
        else:
            tally["equal, replayed"] += 1
        wasted = needless(world, outcome)
        if wasted:
            tally["worlds with a needless trace or eager call"] += 1
            needless_paths[" > ".join(world.path[:-1])] += 1
            for i in wasted:
                # the reason recorded for the i-th call that did not replay
                where = [j for j in range(CALLS)
                         if outcome.kinds[j] in ("trace", "eager")].index(i)
                reasons[outcome.reasons[where][:160]] += 1
    print(dict(tally))
    print("needless traces / eager calls by path:", needless_paths.most_common(12))
    print("their reasons:", reasons.most_common(12))
    return failing


if __name__ == "__main__":
    first, count = (int(a) for a in sys.argv[1:3])
    sys.exit(1 if sweep(first, count) else 0)
