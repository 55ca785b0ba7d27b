"""Compiled == eager for every way a call reads or writes Python state (issue: "hunt stale
replays").

A replay runs the captured tensor program and nothing else, so every Python effect the call
makes and every Python read a replay depends on must be noticed: guarded (a changed read traces
again) or an effect (traced again, then run eagerly with a warning). Each case below is a small
world, a module's source defining `f` (the function compiled), `state()` (the Python state
afterwards) and optionally `between(i)` (what the user changes before call `i`, for a read) and
`args(i)` (the call's arguments). The world is built fresh for the eager run and for the
compiled run; every return value and the state after every call must be the same, and a call
that ran eagerly instead of replaying must have come with a warning.
"""

from __future__ import annotations

import math
import os
import random
import sys
import warnings

import numpy as np
import pytest

import kiln
import kiln.nn as nn
import kiln.nn.functional as F

CALLS = 6

# name -> source; each case reads or writes Python state in one way
CASES: dict[str, str] = {}


def case(name: str, source: str) -> None:
    assert name not in CASES, name
    CASES[name] = source


# ----------------------------------------------------------------------------- attributes

_OBJ = """
class S:
    pass
s = S()
s.n = 0
"""
case("setattr write", _OBJ + """
def f(x):
    setattr(s, "n", s.n + 1)
    return x * s.n
def state():
    return vars(s)
""")
case("setattr read", _OBJ + """
def between(i):
    setattr(s, "k", [1.0, 2.0, 2.0, 3.0, 3.0, 0.5][i])
def f(x):
    return x * getattr(s, "k")
def state():
    return vars(s)
""")
case("setattr new name each call", _OBJ + """
def f(x):
    setattr(s, "a%d" % len(vars(s)), 1)
    return x * len(vars(s))
def state():
    return sorted(vars(s))
""")
case("delattr inside", _OBJ + """
def between(i):
    if i % 2 == 0:
        s.tmp = float(i)
def f(x):
    if hasattr(s, "tmp"):
        v = s.tmp
        delattr(s, "tmp")
        return x + v
    return x
def state():
    return vars(s)
""")
case("delattr between", _OBJ + """
s.k = 2.0
def between(i):
    if i == 2:
        del s.k
    if i == 4:
        s.k = 5.0
def f(x):
    return x * getattr(s, "k", 1.0)
def state():
    return vars(s)
""")
case("object.__setattr__", _OBJ + """
def f(x):
    object.__setattr__(s, "n", s.n + 1)
    return x * s.n
def state():
    return vars(s)
""")
case("__dict__ item write", _OBJ + """
def f(x):
    s.__dict__["n"] = s.__dict__["n"] + 1
    return x * s.n
def state():
    return vars(s)
""")
case("__dict__ item read", _OBJ + """
def between(i):
    s.__dict__["n"] = [1, 1, 2, 2, 3, 3][i]
def f(x):
    return x * s.__dict__["n"]
def state():
    return vars(s)
""")
case("vars().update", _OBJ + """
def f(x):
    vars(s).update(n=s.n + 1)
    return x * s.n
def state():
    return vars(s)
""")
case("class attribute written", """
class C:
    counter = 0
def f(x):
    C.counter += 1
    return x * C.counter
def state():
    return C.counter
""")
case("class attribute read", """
class C:
    scale = 1.0
c = C()
def between(i):
    C.scale = [1.0, 1.0, 2.0, 2.0, 4.0, 4.0][i]
def f(x):
    return x * c.scale
def state():
    return C.scale
""")
case("instance shadows class attribute", """
class C:
    scale = 1.0
c = C()
def between(i):
    if i == 2:
        c.scale = 3.0
    if i == 4:
        del c.scale
def f(x):
    return x * c.scale
def state():
    return vars(c)
""")
case("property with a side effect", """
class P:
    def __init__(self):
        self._n = 0
    @property
    def n(self):
        self._n += 1
        return self._n
p = P()
def f(x):
    return x * p.n
def state():
    return p._n
""")
case("descriptor with a side effect", """
class Counted:
    def __init__(self):
        self.reads = 0
    def __get__(self, obj, cls):
        self.reads += 1
        return float(self.reads)
class H:
    v = Counted()
h = H()
def f(x):
    return x * h.v
def state():
    return H.__dict__["v"].reads
""")
case("__slots__ written", """
class Sl:
    __slots__ = ("n",)
sl = Sl()
sl.n = 0
def f(x):
    sl.n += 1
    return x * sl.n
def state():
    return sl.n
""")
case("__slots__ read", """
class Sl:
    __slots__ = ("n", "m")
sl = Sl()
sl.n = 1.0
def between(i):
    sl.n = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * sl.n
def state():
    return sl.n
""")
case("dataclass field written", """
import dataclasses
@dataclasses.dataclass
class Cfg:
    steps: int = 0
cfg = Cfg()
def f(x):
    cfg.steps += 1
    return x * cfg.steps
def state():
    return cfg.steps
""")
case("frozen dataclass replaced", """
import dataclasses
@dataclasses.dataclass(frozen=True)
class Cfg:
    scale: float = 1.0
cfg = Cfg()
def between(i):
    global cfg
    cfg = dataclasses.replace(cfg, scale=[1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i])
def f(x):
    return x * cfg.scale
def state():
    return cfg.scale
""")
case("frozen dataclass object.__setattr__", """
import dataclasses
@dataclasses.dataclass(frozen=True)
class Cfg:
    scale: float = 1.0
cfg = Cfg()
def f(x):
    object.__setattr__(cfg, "scale", cfg.scale + 1)
    return x * cfg.scale
def state():
    return cfg.scale
""")
case("namedtuple replaced", """
import collections
NT = collections.namedtuple("NT", "scale shift")
cfg = NT(1.0, 0.0)
def between(i):
    global cfg
    cfg = cfg._replace(scale=[1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i])
def f(x):
    return x * cfg.scale + cfg.shift
def state():
    return tuple(cfg)
""")
case("enum member", """
import enum
class Mode(enum.Enum):
    A = 1
    B = 2
MODE = Mode.A
def between(i):
    global MODE
    MODE = [Mode.A, Mode.A, Mode.B, Mode.B, Mode.A, Mode.B][i]
def f(x):
    return x * 2 if MODE is Mode.A else x * MODE.value * 3
def state():
    return MODE.name
""")

# ----------------------------------------------------------------------------- names and cells

case("global rebound", """
N = 0
def f(x):
    global N
    N += 1
    return x * N
def state():
    return N
""")
case("global read", """
N = 1.0
def between(i):
    global N
    N = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * N
def state():
    return N
""")
case("global tensor rebound inside", """
ACC = kiln.zeros(3)
def f(x):
    global ACC
    ACC = ACC + x
    return ACC * 2
def state():
    return ACC
""")
case("nonlocal rebound", """
def make():
    n = 0
    def f(x):
        nonlocal n
        n += 1
        return x * n
    return f
f = make()
def state():
    return f.__closure__[0].cell_contents
""")
case("nonlocal read", """
def make():
    k = 1.0
    def f(x):
        return x * k
    def set_k(v):
        nonlocal k
        k = v
    return f, set_k
f, set_k = make()
def between(i):
    set_k([1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i])
def state():
    return f.__closure__[0].cell_contents
""")
case("closure over a mutable cell", """
def make():
    box = [0]
    def f(x):
        box[0] += 1
        return x * box[0]
    return f, box
f, box = make()
def state():
    return list(box)
""")
case("default mutable argument", """
def f(x, cache={}):
    cache["n"] = cache.get("n", 0) + 1
    return x * cache["n"]
def state():
    return dict(f.__defaults__[0])
""")
case("default argument memo of a tensor", """
def f(x, cache={}):
    if "first" not in cache:
        cache["first"] = x * 2
    return cache["first"] + x
def state():
    return dict(f.__defaults__[0])
""")
case("default argument rebound", """
def f(x, k=1.0):
    return x * k
def between(i):
    f.__defaults__ = ([1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i],)
def state():
    return f.__defaults__
""")

# ----------------------------------------------------------------------------- containers

case("dict.setdefault", """
D = {}
def f(x):
    D.setdefault("a", []).append(1)
    return x * len(D["a"])
def state():
    return D
""")
case("dict.setdefault existing", """
D = {"a": 2.0}
def between(i):
    if i == 3:
        D["a"] = 5.0
def f(x):
    return x * D.setdefault("a", 1.0)
def state():
    return D
""")
case("dict.pop", """
D = {}
def between(i):
    if i % 2 == 0:
        D["a"] = float(i + 1)
def f(x):
    return x + D.pop("a", 0.0)
def state():
    return D
""")
case("dict.update", """
D = {"n": 0}
def f(x):
    D.update(n=D["n"] + 1)
    return x * D["n"]
def state():
    return D
""")
case("dict.clear", """
D = {"a": 1}
def between(i):
    if i % 2 == 1:
        D["b"] = i
def f(x):
    n = len(D)
    D.clear()
    return x + n
def state():
    return D
""")
case("list.extend", """
L = []
def f(x):
    L.extend([1, 2])
    return x * len(L)
def state():
    return L
""")
case("list.insert", """
L = [1.0]
def f(x):
    L.insert(0, L[-1] + 1)
    return x * L[0]
def state():
    return L
""")
case("list.pop", """
L = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
def f(x):
    return x * L.pop()
def state():
    return L
""")
case("list.sort", """
L = [3.0, 1.0, 2.0]
def between(i):
    L.append(-float(i))
def f(x):
    L.sort()
    return x * L[0]
def state():
    return L
""")
case("list.reverse", """
L = [1.0, 2.0, 3.0]
def f(x):
    L.reverse()
    return x * L[0]
def state():
    return L
""")
case("list item read", """
L = [1.0, 2.0]
def between(i):
    L[1] = [2.0, 2.0, 3.0, 3.0, 4.0, 4.0][i]
def f(x):
    return x * L[1]
def state():
    return L
""")
case("deque append", """
import collections
dq = collections.deque(maxlen=3)
def f(x):
    dq.append(float(len(dq) + 1))
    return x * sum(dq)
def state():
    return list(dq)
""")
case("deque rotate", """
import collections
dq = collections.deque([1.0, 2.0, 3.0])
def f(x):
    dq.rotate(1)
    return x * dq[0]
def state():
    return list(dq)
""")
case("Counter", """
import collections
C = collections.Counter()
def f(x):
    C["calls"] += 1
    return x * C["calls"]
def state():
    return dict(C)
""")
case("defaultdict counted", """
import collections
dd = collections.defaultdict(int)
def f(x):
    dd["n"] += 1
    return x * dd["n"]
def state():
    return dict(dd)
""")
case("defaultdict missing key read", """
import collections
dd = collections.defaultdict(lambda: 1.0)
def between(i):
    if i == 3:
        dd["k"] = 4.0
def f(x):
    return x * dd["k"]
def state():
    return dict(dd)
""")
case("OrderedDict.move_to_end", """
import collections
od = collections.OrderedDict(a=1.0, b=2.0, c=3.0)
def f(x):
    od.move_to_end(next(iter(od)))
    return x * next(iter(od.values()))
def state():
    return list(od.items())
""")
case("OrderedDict reordered between", """
import collections
od = collections.OrderedDict(a=1.0, b=2.0, c=3.0)
def between(i):
    if i in (2, 4):
        od.move_to_end("a")
def f(x):
    return x * next(iter(od.values()))
def state():
    return list(od.items())
""")
case("dict reordered between", """
D = {"a": 1.0, "b": 2.0}
def between(i):
    if i in (2, 3):
        first = next(iter(D))
        D[first] = D.pop(first)
def f(x):
    return x * next(iter(D.values()))
def state():
    return list(D.items())
""")
case("deque read", """
import collections
dq = collections.deque([1.0, 2.0], maxlen=2)
def between(i):
    if i in (2, 4):
        dq.append(float(i))
def f(x):
    return x * dq[0]
def state():
    return list(dq)
""")
case("set.add", """
S = set()
def f(x):
    S.add(len(S))
    return x * len(S)
def state():
    return sorted(S)
""")
case("set.discard", """
S = {1, 2, 3, 4, 5, 6, 7}
def f(x):
    S.discard(min(S))
    return x * min(S)
def state():
    return sorted(S)
""")
case("set membership read", """
S = {"a"}
def between(i):
    if i == 2:
        S.add("b")
    if i == 4:
        S.discard("b")
def f(x):
    return x * 2 if "b" in S else x
def state():
    return sorted(S)
""")
case("nested containers written 3 deep", """
W = {"a": {"b": {"c": [1.0]}}}
def f(x):
    W["a"]["b"]["c"].append(1.0)
    return x * len(W["a"]["b"]["c"])
def state():
    return W
""")
case("nested containers read 3 deep", """
W = {"a": [{"c": [1.0]}]}
def between(i):
    W["a"][0]["c"][0] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * W["a"][0]["c"][0]
def state():
    return W
""")
case("nested containers read 6 deep", """
W = {"a": {"b": {"c": {"d": {"e": [1.0]}}}}}
def between(i):
    W["a"]["b"]["c"]["d"]["e"][0] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * W["a"]["b"]["c"]["d"]["e"][0]
def state():
    return W
""")
case("tuple of lists written", """
T = ([1.0], [2.0])
def f(x):
    T[1][0] += 1
    return x * T[1][0]
def state():
    return T
""")

# ----------------------------------------------------------------------------- iterators

case("itertools.count", """
import itertools
ctr = itertools.count(1)
def f(x):
    return x * next(ctr)
def state():
    return None
""")
case("generator advanced", """
def gen():
    i = 0
    while True:
        i += 1
        yield float(i)
g = gen()
def f(x):
    return x * next(g)
def state():
    return None
""")
case("list iterator next", """
it = iter([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
def f(x):
    return x * next(it)
def state():
    return None
""")
case("itertools.cycle", """
import itertools
cyc = itertools.cycle([1.0, 2.0])
def f(x):
    return x * next(cyc)
def state():
    return None
""")

# ----------------------------------------------------------------- caches, modules, the environment

case("DataLoader iterator next", """
from kiln.utils.data import DataLoader, TensorDataset
data = TensorDataset(kiln.arange(24.0).reshape(8, 3))
it = iter(DataLoader(data, batch_size=1))
def f(x):
    (batch,) = next(it)
    return x + batch
def state():
    return None
""")
case("lru_cache helper", """
import functools
SEEN = []
@functools.lru_cache(maxsize=None)
def scale(k):
    SEEN.append(k)
    return k * 2.0
K = 1
def between(i):
    global K
    K = [1, 1, 2, 2, 1, 3][i]
def f(x):
    return x * scale(K)
def state():
    return SEEN
""")
case("lru_cache helper reading a global", """
import functools
G = 1.0
@functools.lru_cache(maxsize=None)
def scale():
    return G * 2
def between(i):
    global G
    G = float(i)
    if i == 3:
        scale.cache_clear()
def f(x):
    return x * scale()
def state():
    return G
""")
case("user module attribute read", """
import types, sys
cfgmod = types.ModuleType("stale_cfgmod")
cfgmod.lr = 1.0
sys.modules["stale_cfgmod"] = cfgmod
other = types.ModuleType("stale_user")
exec("import stale_cfgmod\\ndef f(x):\\n    return x * stale_cfgmod.lr\\n", vars(other))
f = other.f
def between(i):
    cfgmod.lr = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def state():
    return cfgmod.lr
""")
case("user module attribute written", """
import types
cfgmod = types.ModuleType("stale_cfgmod2")
cfgmod.step = 0
def f(x):
    cfgmod.step += 1
    return x * cfgmod.step
def state():
    return cfgmod.step
""")
case("os.environ read", """
import os
def between(i):
    os.environ["KILN_STALE_SCALE"] = ["1", "1", "2", "2", "3", "3"][i]
def f(x):
    return x * float(os.environ.get("KILN_STALE_SCALE", "1"))
def state():
    return None
""")
case("os.environ written", """
import os
os.environ["KILN_STALE_N"] = "0"
def f(x):
    os.environ["KILN_STALE_N"] = str(int(os.environ["KILN_STALE_N"]) + 1)
    return x
def state():
    return os.environ["KILN_STALE_N"]
""")
case("time.time stored", """
import time
T = []
def f(x):
    T.append(time.time())
    return x * 2
def state():
    return len(T)
""")
case("random.random drawn", """
import random
def f(x):
    return x * random.random()
def state():
    return None
""")
case("random.Random instance drawn", """
import random
rng = random.Random(0)
def f(x):
    return x * rng.random()
def state():
    return None
""")
case("np.random drawn", """
import numpy as np
def f(x):
    return x * float(np.random.rand())
def state():
    return None
""")
case("np.random.default_rng drawn", """
import numpy as np
rng = np.random.default_rng(0)
def f(x):
    return x * float(rng.random())
def state():
    return None
""")
case("sys.modules lookup", """
import sys, types
def between(i):
    if i == 2:
        sys.modules["stale_optional"] = types.ModuleType("stale_optional")
    if i == 4:
        del sys.modules["stale_optional"]
def f(x):
    return x * 2 if sys.modules.get("stale_optional") is not None else x
def state():
    return None
""")
case("WeakValueDictionary written", """
import weakref
class O:
    pass
KEEP = [O() for _ in range(8)]
wvd = weakref.WeakValueDictionary()
def f(x):
    wvd[len(wvd)] = KEEP[len(wvd)]
    return x * len(wvd)
def state():
    return sorted(wvd.keys())
""")
case("WeakValueDictionary read", """
import weakref
class O:
    pass
KEEP = [O() for _ in range(8)]
wvd = weakref.WeakValueDictionary()
def between(i):
    if i in (2, 4):
        wvd[i] = KEEP[i]
def f(x):
    return x * (len(wvd) + 1)
def state():
    return sorted(wvd.keys())
""")
case("contextvars read", """
import contextvars
cv = contextvars.ContextVar("stale_cv", default=1.0)
def between(i):
    cv.set([1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i])
def f(x):
    return x * cv.get()
def state():
    return cv.get()
""")
case("contextvars written", """
import contextvars
cv = contextvars.ContextVar("stale_cv2", default=0)
def f(x):
    cv.set(cv.get() + 1)
    return x * cv.get()
def state():
    return cv.get()
""")
case("threading.local written", """
import threading
tl = threading.local()
tl.n = 0
def f(x):
    tl.n += 1
    return x * tl.n
def state():
    return tl.n
""")
case("threading.local read", """
import threading
tl = threading.local()
def between(i):
    tl.k = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * tl.k
def state():
    return tl.k
""")
case("string built", """
LOG = ""
def f(x):
    global LOG
    LOG += "call;"
    return x
def state():
    return LOG
""")
case("list of strings built", """
LOG = []
def f(x):
    LOG.append("call %d" % len(LOG))
    return x
def state():
    return LOG
""")
case("bytearray built", """
buf = bytearray()
def f(x):
    buf.extend(b"ab")
    return x * len(buf)
def state():
    return bytes(buf)
""")
case("KeyError caught", """
D = {}
def f(x):
    try:
        v = D["k"]
    except KeyError:
        v = 0
    D["k"] = v + 1
    return x * D["k"]
def state():
    return D
""")
case("KeyError caught read", """
D = {}
def between(i):
    if i == 2:
        D["k"] = 3.0
    if i == 4:
        del D["k"]
def f(x):
    try:
        v = D["k"]
    except KeyError:
        v = -1.0
    return x * v
def state():
    return D
""")

# ---------------------------------------------------------------------------- tensors kept in state

case("tensor stored and read back", """
C = {}
def f(x):
    prev = C.get("h")
    y = x if prev is None else x + prev
    C["h"] = y * 0.5
    return y
def state():
    return C
""")
case("tensors appended to a list", """
H = []
def f(x):
    H.append(x * 2)
    return sum(H)
def state():
    return H
""")
case("tensor stored on an object", """
class S:
    pass
s = S()
s.h = kiln.zeros(3)
def f(x):
    s.h = s.h * 0.5 + x
    return s.h + 1
def state():
    return s.h
""")
case("item stored in state", """
S = {"total": 0.0}
def f(x):
    y = x * 2
    S["total"] += float(y.sum())
    return y
def state():
    return S
""")
case("item returned", """
def f(x):
    return (x * 2).sum().item()
def state():
    return None
""")
case("requires_grad swapped", """
w = kiln.ones(3, requires_grad=True)
def between(i):
    w.requires_grad_(i % 3 != 1)
def f(x):
    return (x * w).sum()
def state():
    return w.requires_grad
""")
case(".data swapped", """
w = kiln.ones(3, requires_grad=True)
def between(i):
    w.data = kiln.full((3,), float(i))
def f(x):
    return x * w
def state():
    return w
""")
case(".grad swapped", """
w = kiln.ones(3, requires_grad=True)
def between(i):
    w.grad = None if i == 3 else kiln.full((3,), float(i))
def f(x):
    return x if w.grad is None else x * w.grad
def state():
    return w.grad
""")
case("tensor attribute read", """
w = kiln.ones(3)
w.scale = 1.0
def between(i):
    w.scale = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * w * w.scale
def state():
    return w.scale
""")
case("tensor in-place update", """
acc = kiln.zeros(3)
def f(x):
    acc.add_(x)
    return acc * 1
def state():
    return acc
""")

# -------------------------------------------------------------------------- kiln's own global state

case("default dtype changed between", """
def between(i):
    kiln.set_default_dtype(kiln.float64 if i in (2, 3) else kiln.float32)
def f(x):
    return x * kiln.ones(3)
def state():
    return str(kiln.get_default_dtype())
""")
case("manual_seed between, a draw inside", """
def between(i):
    kiln.manual_seed([0, 0, 1, 1, 0, 2][i])
def f(x):
    return x + kiln.rand(3)
def state():
    return None
""")
case("grad mode toggled outside", """
w = kiln.ones(3, requires_grad=True)
def between(i):
    kiln.set_grad_enabled(i % 2 == 0)
def f(x):
    return x * w
def state():
    return kiln.is_grad_enabled()
""")
case("partial's keywords edited", """
import functools
def scaled(x, k=1.0):
    return x * k
g = functools.partial(scaled, k=1.0)
def between(i):
    g.keywords["k"] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return g(x)
def state():
    return dict(g.keywords)
""")
case("array.array written", """
import array
arr = array.array("d", [1.0])
def f(x):
    arr[0] += 1
    return x * arr[0]
def state():
    return list(arr)
""")
case("heapq on a list", """
import heapq
H = [5.0, 3.0, 4.0]
def f(x):
    heapq.heappush(H, float(len(H)))
    return x * heapq.heappop(H)
def state():
    return sorted(H)
""")

# --------------------------------------------------------------------------- modules and optimizers

case("ModuleList entry swapped", """
kiln.manual_seed(0)
ml = nn.ModuleList([nn.Linear(3, 3), nn.Linear(3, 3)])
spare = nn.Linear(3, 3)
def between(i):
    if i == 2:
        ml[0] = spare
def f(x):
    return ml[0](x)
def state():
    return None
""")
case("ModuleDict reordered between", """
md = nn.ModuleDict({"a": nn.Tanh(), "b": nn.Sigmoid()})
def between(i):
    if i == 3:
        md["a"] = md.pop("a")
def f(x):
    for m in md.values():
        x = m(x) * 2
    return x
def state():
    return list(md.keys())
""")
case("ModuleList appended inside", """
ml = nn.ModuleList()
def f(x):
    ml.append(nn.Identity())
    for m in ml:
        x = m(x) + 1
    return x
def state():
    return len(ml)
""")
case("ModuleDict entry swapped", """
kiln.manual_seed(0)
md = nn.ModuleDict({"a": nn.Linear(3, 3), "b": nn.ReLU()})
def between(i):
    if i == 2:
        md["a"] = nn.Tanh()
    if i == 4:
        del md["b"]
def f(x):
    for m in md.values():
        x = m(x)
    return x
def state():
    return list(md.keys())
""")
case("register_buffer at call time", """
m = nn.Module()
def f(x):
    if not hasattr(m, "seen"):
        m.register_buffer("seen", x * 2)
    return x + m.seen
def state():
    return dict(m.named_buffers())
""")
case("register_buffer each call", """
m = nn.Module()
def f(x):
    m.register_buffer("b%d" % len(m._buffers), x * 2)
    return sum(m._buffers.values())
def state():
    return dict(m.named_buffers())
""")
case("forward hook added and removed between", """
kiln.manual_seed(0)
lin = nn.Linear(3, 3)
handles = []
def between(i):
    if i == 2:
        handles.append(lin.register_forward_hook(lambda mod, inp, out: out * 3))
    if i == 4:
        handles.pop().remove()
def f(x):
    return lin(x)
def state():
    return None
""")
case("forward pre-hook added between", """
kiln.manual_seed(0)
lin = nn.Linear(3, 3)
def between(i):
    if i == 3:
        lin.register_forward_pre_hook(lambda mod, inp: (inp[0] * 2,))
def f(x):
    return lin(x)
def state():
    return None
""")
case("hook added inside each call", """
kiln.manual_seed(0)
lin = nn.Linear(3, 3)
def f(x):
    lin.register_forward_hook(lambda mod, inp, out: out + 1)
    return lin(x)
def state():
    return len(lin._forward_hooks)
""")
case("hook added and removed inside", """
kiln.manual_seed(0)
lin = nn.Linear(3, 3)
def f(x):
    h = lin.register_forward_hook(lambda mod, inp, out: out * 2)
    y = lin(x)
    h.remove()
    return y
def state():
    return len(lin._forward_hooks)
""")
case("hook closure state", """
kiln.manual_seed(0)
lin = nn.Linear(3, 3)
calls = [0]
def hook(mod, inp, out):
    calls[0] += 1
    return out * calls[0]
lin.register_forward_hook(hook)
def f(x):
    return lin(x)
def state():
    return calls
""")
case("train/eval toggled outside", """
kiln.manual_seed(0)
bn = nn.BatchNorm1d(3)
def args(i):
    return (kiln.arange(6.0).reshape(2, 3) * (i + 1),)
def between(i):
    bn.train(i % 2 == 0)
def f(x):
    return bn(x)
def state():
    return dict(bn.named_buffers())
""")
case("train/eval toggled inside", """
kiln.manual_seed(0)
bn = nn.BatchNorm1d(3)
def args(i):
    return (kiln.arange(6.0).reshape(2, 3) * (i + 1),)
def f(x):
    bn.eval()
    y = bn(x)
    bn.train()
    return y + bn(x)
def state():
    return dict(bn.named_buffers()), bn.training
""")
case("train flipped inside each call", """
kiln.manual_seed(0)
bn = nn.BatchNorm1d(3)
def args(i):
    return (kiln.arange(6.0).reshape(2, 3) * (i + 1),)
def f(x):
    bn.train(not bn.training)
    return bn(x)
def state():
    return dict(bn.named_buffers()), bn.training
""")
case("module attribute counter", """
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.steps = 0
    def forward(self, x):
        self.steps += 1
        return x * self.steps
m = M()
f = m
def state():
    return m.steps
""")
case("optimizer lr edited inside", """
w = kiln.ones(3, requires_grad=True)
opt = kiln.optim.SGD([w], lr=0.1)
def f(x):
    opt.param_groups[0]["lr"] *= 0.5
    opt.zero_grad()
    loss = (w * x).sum()
    loss.backward()
    opt.step()
    return loss
def state():
    return w, opt.param_groups[0]["lr"]
""")
case("optimizer lr edited outside", """
w = kiln.ones(3, requires_grad=True)
opt = kiln.optim.SGD([w], lr=0.1)
def between(i):
    for g in opt.param_groups:
        g["lr"] = [0.1, 0.1, 0.2, 0.2, 0.05, 0.05][i]
def f(x):
    opt.zero_grad()
    loss = (w * x).sum()
    loss.backward()
    opt.step()
    return loss
def state():
    return w
""")
# a learning rate the call sets before a step reads it: the step computes with what was set,
# where a replay once read the group as it began (the previous call's last value), and two
# steps of one call with a rate set between them shared the first one's
case("optimizer lr set between two steps inside", """
w = kiln.ones(3, requires_grad=True)
opt = kiln.optim.SGD([w], lr=0.1)
def f(x):
    for lr in (0.1, 0.05):
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        loss = (w * x).sum() ** 2
        loss.backward()
        opt.step()
    return loss
def state():
    return w, opt.param_groups[0]["lr"]
""")
case("optimizer lr set before the step, another after", """
w = kiln.ones(3, requires_grad=True)
opt = kiln.optim.SGD([w], lr=0.1, momentum=0.9)
def f(x):
    opt.param_groups[0]["lr"] = 0.2
    opt.zero_grad()
    loss = (w * x).sum() ** 2
    loss.backward()
    opt.step()
    opt.param_groups[0]["lr"] = 0.01
    return loss
def state():
    return w, opt.param_groups[0]["lr"]
""")
case("optimizer betas and lr set by update and |= inside", """
w = kiln.ones(3, requires_grad=True)
opt = kiln.optim.Adam([w], lr=0.1)
def f(x):
    opt.param_groups[0].update(lr=0.05, betas=(0.8, 0.9))
    opt.zero_grad()
    (w * x).sum().backward()
    opt.step()
    opt.param_groups[0] |= {"lr": 0.1, "betas": (0.9, 0.999)}
    return w * 1
def state():
    return w, opt.param_groups[0]["lr"], opt.param_groups[0]["betas"]
""")
case("optimizer warmup lr from the step number argument", """
import math
w = kiln.ones(3, requires_grad=True)
opt = kiln.optim.AdamW([w], lr=0.1)
def args(i):
    return (kiln.tensor([1.0, -2.0, 0.5]) * (i + 1), i)
def f(x, it):
    lr = 0.1 * 0.5 * (1 + math.cos(math.pi * it / 6))
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad()
    loss = ((w * x).sum() - 1) ** 2
    loss.backward()
    opt.step()
    return loss
def state():
    return w, opt.param_groups[0]["lr"]
""")
case("optimizer param group added inside", """
w = kiln.ones(3, requires_grad=True)
extra = [kiln.ones(3, requires_grad=True) for _ in range(8)]
opt = kiln.optim.SGD([w], lr=0.1)
def f(x):
    opt.add_param_group({"params": [extra[len(opt.param_groups) - 1]]})
    return x * len(opt.param_groups)
def state():
    return len(opt.param_groups)
""")


# ------------------------------------------------ more of the standard library, found while probing
case("iterator argument", """
it = iter([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
def args(i):
    return (kiln.arange(3.0), it)
def f(x, it):
    return x * next(it)
def state():
    return None
""")
case("dict keys view", """
D = {"a": 1.0}
keys = D.keys()
def between(i):
    if i in (2, 4):
        D[str(i)] = 1.0
def f(x):
    return x * len(keys)
def state():
    return None
""")
case("mappingproxy", """
import types
D = {"a": 1.0}
view = types.MappingProxyType(D)
def between(i):
    D["a"] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * view["a"]
def state():
    return None
""")
case("ChainMap", """
import collections
base = {"k": 1.0}
cm = collections.ChainMap({}, base)
def between(i):
    base["k"] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * cm["k"]
def state():
    return None
""")
case("ChainMap written", """
import collections
cm = collections.ChainMap({"n": 0})
def f(x):
    cm["n"] += 1
    return x * cm["n"]
def state():
    return dict(cm)
""")
case("queue.Queue get", """
import queue
q = queue.Queue()
for v in [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]:
    q.put(v)
def f(x):
    return x * q.get()
def state():
    return q.qsize()
""")
case("dict subclass attribute", """
class Reg(dict):
    pass
reg = Reg(a=1.0)
reg.scale = 1.0
def between(i):
    reg.scale = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * reg["a"] * reg.scale
def state():
    return reg.scale
""")
case("list subclass attribute written", """
class Hist(list):
    pass
h = Hist()
h.calls = 0
def f(x):
    h.calls += 1
    return x * h.calls
def state():
    return h.calls
""")
case("logging to a list handler", """
import logging
RECORDS = []
class ListHandler(logging.Handler):
    def emit(self, record):
        RECORDS.append(record.getMessage())
log = logging.getLogger("stale_probe")
log.setLevel(logging.INFO)
log.addHandler(ListHandler())
log.propagate = False
def f(x):
    log.info("step")
    return x * 2
def state():
    return len(RECORDS)
""")
case("logger level read", """
import logging
log = logging.getLogger("stale_probe2")
def between(i):
    log.setLevel(logging.DEBUG if i in (2, 3) else logging.WARNING)
def f(x):
    return x * 2 if log.isEnabledFor(logging.DEBUG) else x
def state():
    return None
""")
case("enumerate global", """
en = enumerate([5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0])
def f(x):
    i, v = next(en)
    return x * v + i
def state():
    return None
""")
case("generator in a closure", """
def make():
    def gen():
        v = 0.0
        while True:
            v += 1
            yield v
    g = gen()
    def f(x):
        return x * next(g)
    return f
f = make()
def state():
    return None
""")
case("weakref to object read", """
import weakref
class O:
    pass
o = O()
o.k = 1.0
r = weakref.ref(o)
def between(i):
    o.k = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * r().k
def state():
    return None
""")
case("functools.cached_property", """
import functools
class C:
    def __init__(self):
        self.base = 1.0
    @functools.cached_property
    def scale(self):
        return self.base * 2
c = C()
def between(i):
    c.base = float(i)
    if i == 3:
        del c.scale
def f(x):
    return x * c.scale
def state():
    return None
""")
case("dataclass with a list field", """
import dataclasses
@dataclasses.dataclass
class St:
    hist: list = dataclasses.field(default_factory=list)
st = St()
def f(x):
    st.hist.append(1)
    return x * len(st.hist)
def state():
    return st.hist
""")
case("itertools.islice", """
import itertools
sl = itertools.islice(itertools.count(1), 100)
def f(x):
    return x * next(sl)
def state():
    return None
""")


# ---------------------------------------- names read by computed name, bound C methods, more probes
case("globals() read", """
N = 1.0
def between(i):
    globals()["N"] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * globals().get("N", 0.0)
def state():
    return None
""")
case("globals() written", """
N = 0
def f(x):
    globals()["N"] = globals()["N"] + 1
    return x * N
def state():
    return N
""")
case("eval of a global", """
N = 1.0
def between(i):
    global N
    N = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * eval("N")
def state():
    return None
""")
case("getattr on a module by string", """
import types
cfg = types.ModuleType("stale_cfg3")
cfg.lr = 1.0
def between(i):
    cfg.lr = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * getattr(cfg, "lr")
def state():
    return None
""")
case("module __dict__ read", """
import types
cfg = types.ModuleType("stale_cfg4")
cfg.lr = 1.0
def between(i):
    cfg.lr = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * vars(cfg)["lr"]
def state():
    return None
""")
case("attrgetter", """
import operator
class S:
    pass
s = S()
s.k = 1.0
get_k = operator.attrgetter("k")
def between(i):
    s.k = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * get_k(s)
def state():
    return None
""")
case("itemgetter on a global dict", """
import operator
D = {"k": 1.0}
get_k = operator.itemgetter("k")
def between(i):
    D["k"] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * get_k(D)
def state():
    return None
""")
case("type(self) class attribute", """
class M(nn.Module):
    SCALE = 1.0
    def forward(self, x):
        return x * type(self).SCALE
m = M()
f = m
def between(i):
    M.SCALE = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def state():
    return None
""")
case("global module forward hook", """
from kiln.nn.modules.module import register_module_forward_hook
lin = nn.Tanh()
handles = []
def between(i):
    if i == 2:
        handles.append(register_module_forward_hook(lambda m, inp, out: out * 3))
    if i == 4:
        handles.pop().remove()
def f(x):
    return lin(x)
def state():
    return None
""")
case("__getattr__ class", """
class Cfg:
    def __init__(self):
        self._d = {"lr": 1.0}
    def __getattr__(self, name):
        return self._d[name]
cfg = Cfg()
def between(i):
    cfg._d["lr"] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * cfg.lr
def state():
    return None
""")
case("optimizer state edited between", """
w = kiln.ones(3, requires_grad=True)
opt = kiln.optim.SGD([w], lr=0.1, momentum=0.9)
def between(i):
    if i == 3:
        opt.state.clear()
def f(x):
    opt.zero_grad()
    loss = (w * x).sum()
    loss.backward()
    opt.step()
    return loss
def state():
    return w
""")
case("str.format of a global", """
TAG = "a"
NAMES = []
def between(i):
    global TAG
    TAG = "ab"[i % 2]
def f(x):
    NAMES.append("{}-{}".format(TAG, len(NAMES)))
    return x
def state():
    return NAMES
""")
case("sorted over a global set", """
S = {3.0, 1.0}
def between(i):
    if i == 3:
        S.add(0.5)
def f(x):
    return x * sorted(S)[0]
def state():
    return None
""")
case("dict in a tuple in a list", """
L = [({"k": 1.0},)]
def between(i):
    L[0][0]["k"] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * L[0][0]["k"]
def state():
    return None
""")
case("frozenset of tuples read", """
FS = frozenset({(1, 2)})
def between(i):
    global FS
    if i == 3:
        FS = frozenset({(1, 2), (3, 4)})
def f(x):
    return x * len(FS)
def state():
    return None
""")
case("tensor version read via _version", """
w = kiln.ones(3)
def between(i):
    if i == 3:
        w.mul_(2)
def f(x):
    return x * w
def state():
    return None
""")
case("np.random.Generator in an object", """
import numpy as np
class Aug:
    def __init__(self):
        self.rng = np.random.default_rng(0)
aug = Aug()
def f(x):
    return x * float(aug.rng.random())
def state():
    return None
""")
case("random.Random via partial", """
import random, functools
rng = random.Random(0)
draw = functools.partial(rng.uniform, 0.0, 1.0)
def f(x):
    return x * draw()
def state():
    return None
""")
case("bound method of a Random", """
import random
draw = random.Random(0).random
def f(x):
    return x * draw()
def state():
    return None
""")


# ------------------------------------------- NumPy arrays read into Python (guards._Walk.array)
_BIG = "import numpy as np\nimport math\n"
case("large NumPy array read into Python", _BIG + """
A = np.ones(5000)
def between(i):
    A[0] = float(i)
def f(x):
    return x * float(A[0])
def state():
    return None
""")
case("NumPy array in a closure cell", _BIG + """
def make():
    A = np.ones(5000)
    def f(x):
        return x * float(A[7])
    return f, A
f, held = make()
def between(i):
    held[7] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def state():
    return None
""")
case("NumPy array attribute of a module", _BIG + """
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = np.linspace(0.0, 1.0, 5000)
    def forward(self, x):
        return x * float(self.table[4999])
m = M()
f = m
def between(i):
    m.table[4999] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def state():
    return None
""")
case("NumPy array attribute of a plain object", _BIG + """
class Cfg:
    pass
cfg = Cfg()
cfg.mean = np.zeros(5000, dtype=np.float32)
def between(i):
    cfg.mean[10] = [0.0, 0.0, 1.0, 1.0, 2.0, 2.0][i]
def f(x):
    return x - float(cfg.mean[10])
def state():
    return None
""")
case("NumPy array attribute of a Python module", _BIG + """
import types
consts = types.ModuleType("stale_consts")
consts.TABLE = np.ones(5000)
def between(i):
    consts.TABLE[1] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * float(consts.TABLE[1])
def state():
    return None
""")
case("NumPy array item of a list", _BIG + """
L = [np.ones(5000)]
def between(i):
    L[0][2] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * float(L[0][2])
def state():
    return None
""")
case("NumPy array item of a dict", _BIG + """
D = {"scale": np.ones(5000), "shift": np.zeros(5000)}
def between(i):
    D["shift"][0] = [0.0, 0.0, 1.0, 1.0, 2.0, 2.0][i]
def f(x):
    return x * float(D["scale"][0]) + float(D["shift"][0])
def state():
    return None
""")
case("NumPy array element written inside", _BIG + """
A = np.zeros(5000)
def f(x):
    A[0] += 1
    return x * float(A[0])
def state():
    return float(A[0])
""")
case("NumPy array written via a view between", _BIG + """
A = np.ones(5000)
def between(i):
    A[:10][3] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * float(A[3])
def state():
    return None
""")
case("NumPy array written via a view inside", _BIG + """
A = np.zeros(5000)
def f(x):
    v = A[:10]
    v[3] += 1
    return x * float(A[3])
def state():
    return float(A[3])
""")
case("NumPy view read, base written", _BIG + """
BASE = np.ones(5000)
V = BASE[100:200]
def between(i):
    BASE[150] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * float(V[50])
def state():
    return None
""")
case("NumPy array rebound by np.resize", _BIG + """
A = np.ones(5000)
def between(i):
    global A
    if i == 3:
        A = np.resize(A, 6000)
def f(x):
    return x * len(A)
def state():
    return None
""")
case("NumPy array resized in place", _BIG + """
A = np.ones(5000)
def between(i):
    if i == 3:
        A.resize(6000, refcheck=False)
def f(x):
    return x * A.shape[0]
def state():
    return None
""")
case("NumPy array dtype set in place", _BIG + """
A = np.ones(5000, dtype=np.float32)
def between(i):
    if i == 3:
        A.dtype = np.int32
def f(x):
    return x * float(A[0] > 2)
def state():
    return None
""")
case("0-d NumPy array", _BIG + """
A = np.array(1.0)
def between(i):
    A[()] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * float(A)
def state():
    return None
""")
case("NumPy array sign of zero", _BIG + """
A = np.zeros(10)
def between(i):
    A[0] = [0.0, 0.0, -0.0, -0.0, 0.0, -0.0][i]
def f(x):
    return x * math.copysign(1.0, float(A[0]))
def state():
    return None
""")
case("NumPy object array", _BIG + """
A = np.array([1.0, "a", None], dtype=object)
def between(i):
    A[0] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * A[0]
def state():
    return None
""")
case("NumPy object array holding a list", _BIG + """
A = np.empty(2, dtype=object)
A[0], A[1] = [1.0], [2.0]
def between(i):
    A[1][0] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * A[1][0]
def state():
    return None
""")
case("non-contiguous NumPy array", _BIG + """
BASE = np.ones((100, 100), dtype=np.float32)
A = BASE.T[:, ::3]
def between(i):
    BASE[0, 1] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * float(A[1, 0])
def state():
    return None
""")
case("NumPy array baked by kiln.tensor", _BIG + """
A = np.ones(5000, dtype=np.float32)
def between(i):
    A[:3] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x + kiln.tensor(A[:3])
def state():
    return None
""")
case("NumPy array shared by kiln.from_numpy", _BIG + """
DATA = np.ones((5000, 3), dtype=np.float32)
def between(i):
    DATA[0] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * kiln.from_numpy(DATA[0])
def state():
    return None
""")
case("NumPy array past the cap", _BIG + """
A = np.ones(300_000)
def between(i):
    A[0] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * float(A[0])
def state():
    return None
""")
case("NumPy arrays past the cap in all", _BIG + """
ARRS = [np.ones(100_000) for _ in range(6)]
def between(i):
    ARRS[5][0] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * sum(float(a[0]) for a in ARRS)
def state():
    return None
""")
case("NumPy dataset indexed by the call", _BIG + """
DATA = np.arange(600_000, dtype=np.float32).reshape(200_000, 3)
def args(i):
    return (kiln.arange(3.0), i % 2)
def between(i):
    DATA[1] = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x, i):
    return x * kiln.from_numpy(DATA[i])
def state():
    return None
""")

# --------------------------------- modules found by name as the call runs (guards._Walk.imported)
_MOD = """
import importlib, sys, types
m = types.ModuleType("stale_cfg5")
m.lr = 1.0
sys.modules["stale_cfg5"] = m
def between(i):
    m.lr = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def state():
    return None
"""
case("importlib.import_module", _MOD + """
def f(x):
    return x * importlib.import_module("stale_cfg5").lr
""")
case("import_module imported by name", _MOD + """
from importlib import import_module
def f(x):
    return x * import_module("stale_cfg5").lr
""")
case("import_module of a computed name", _MOD + """
NAME = "stale_cfg" + "5"
def f(x):
    return x * importlib.import_module(NAME).lr
""")
case("import statement in the function", _MOD + """
def f(x):
    import stale_cfg5
    return x * stale_cfg5.lr
""")
case("from-import in the function", _MOD + """
def f(x):
    from stale_cfg5 import lr
    return x * lr
""")
case("import_module under another name", _MOD + """
from importlib import import_module as load
def f(x):
    return x * load("stale_cfg5").lr
""")
case("sys under another name", _MOD + """
import sys as system
def f(x):
    return x * system.modules["stale_cfg5"].lr
""")
case("sys.modules item", _MOD + """
def f(x):
    return x * sys.modules["stale_cfg5"].lr
""")
case("__import__", _MOD + """
def f(x):
    return x * __import__("stale_cfg5").lr
""")
case("import_module in a helper", _MOD + """
def config():
    return importlib.import_module("stale_cfg5")
def f(x):
    return x * config().lr
""")
case("module replaced in sys.modules", _MOD.replace("""
    m.lr = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]""", """
    if i == 3:
        new = types.ModuleType("stale_cfg5")
        new.lr = 5.0
        sys.modules["stale_cfg5"] = new""") + """
def f(x):
    return x * importlib.import_module("stale_cfg5").lr
""")
case("imported submodule", """
import importlib, sys, types
pkg = types.ModuleType("stale_pkg")
sub = types.ModuleType("stale_pkg.sub")
pkg.sub = sub
sub.lr = 1.0
sys.modules["stale_pkg"], sys.modules["stale_pkg.sub"] = pkg, sub
def between(i):
    sub.lr = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * __import__("stale_pkg.sub").sub.lr
def state():
    return None
""")
case("submodule attribute of a global package", """
import types
pkg = types.ModuleType("stale_pkg2")
pkg.sub = types.ModuleType("stale_pkg2.sub")
pkg.sub.lr = 1.0
def between(i):
    pkg.sub.lr = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * pkg.sub.lr
def state():
    return None
""")
case("module returned by a helper", """
import types
cfg = types.ModuleType("stale_cfg6")
cfg.lr = 1.0
def config():
    return cfg
def between(i):
    cfg.lr = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0][i]
def f(x):
    return x * config().lr
def state():
    return None
""")
case("imported module written inside", _MOD.replace("m.lr = 1.0", "m.step = 0") + """
def f(x):
    mod = importlib.import_module("stale_cfg5")
    mod.step += 1
    return x * mod.step
""")
case("imported module read by computed name", _MOD + """
def f(x):
    return x * getattr(importlib.import_module("stale_cfg5"), "l" + "r")
""")


# ----------------------------------------------------------------------------- the harness

def observe(value):
    """What a value is, for comparison: tensors as (dtype, requires_grad, array), containers
    element by element, other values as themselves."""
    if isinstance(value, kiln.Tensor):
        return ("tensor", value.dtype.name, value.requires_grad,
                np.array(value.detach().numpy()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [observe(v) for v in value])
    if isinstance(value, dict):
        return ("dict", [(k, observe(v)) for k, v in value.items()])
    return (type(value).__name__, value)


def same(a, b, path: str) -> None:
    assert type(a) is type(b), f"{path}: {a!r} vs {b!r}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=path)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6), f"{path}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def _seed() -> None:
    kiln.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


def run(source: str, compiled: bool):
    """Build the world fresh and call `f` CALLS times: [(result, state)] per call, the compiled
    function (or None) and the kiln.compile warnings."""
    _seed()
    module = type(sys)("stale_world")       # (a dataclass looks its module up)
    sys.modules["stale_world"] = module
    ns = vars(module)
    ns.update(kiln=kiln, nn=nn, F=F)
    exec(compile(source, "<stale world>", "exec"), ns)
    fn = kiln.compile(ns["f"]) if compiled else ns["f"]
    seen = []
    grad, dtype = kiln.is_grad_enabled(), kiln.get_default_dtype()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            for i in range(CALLS):
                if "between" in ns:
                    ns["between"](i)
                args = ns["args"](i) if "args" in ns else (kiln.arange(3.0) + i,)
                _seed()
                seen.append((observe(fn(*args)), observe(ns["state"]())))
        finally:        # (a case that changes kiln's global modes)
            kiln.set_grad_enabled(grad)
            kiln.set_default_dtype(dtype)
    told = [str(w.message) for w in caught if "kiln.compile" in str(w.message)]
    return seen, (fn if compiled else None), told


def eager_calls(fn) -> int:
    """Calls of entries that run eagerly (a break, an effect, a recompile limit)."""
    return sum(e.calls for e in fn.entries.values() if e.program is None)


def outcome(source: str) -> tuple[str, str]:
    """("equal", "replayed" | "warned-eager" | "traced every call") or ("stale", how)."""
    eager, _, _ = run(source, compiled=False)
    compiled, fn, told = run(source, compiled=True)
    try:
        for i, (want, got) in enumerate(zip(eager, compiled)):
            same(got[0], want[0], f"call {i} result")
            same(got[1], want[1], f"call {i} state")
    except AssertionError as e:
        return "stale", str(e).splitlines()[0] + (" (warned)" if told else " (no warning)")
    if told:
        return "equal", "warned-eager"
    replays = sum(e.calls for e in fn.entries.values() if e.program is not None)
    return "equal", "replayed" if replays else "traced every call"


@pytest.fixture(autouse=True)
def _clean_environment():
    saved = {k: os.environ.get(k) for k in ("KILN_STALE_SCALE", "KILN_STALE_N")}
    modules = {k: sys.modules.get(k) for k in ("stale_cfgmod", "stale_optional", "stale_world",
                                           "stale_cfg5", "stale_pkg", "stale_pkg.sub")}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    for k, v in modules.items():
        if v is None:
            sys.modules.pop(k, None)


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_equals_eager(name):
    """Every result and the state after every call as eager's; a call run eagerly instead of
    replayed said so."""
    source = CASES[name]
    eager, _, _ = run(source, compiled=False)
    compiled, fn, told = run(source, compiled=True)
    for i, (want, got) in enumerate(zip(eager, compiled)):
        same(got[0], want[0], f"{name}: call {i} result")
        same(got[1], want[1], f"{name}: call {i} state")
    if eager_calls(fn):
        assert told, f"{name}: ran eagerly without a warning"



# patterns still replayed stale, each with why: a test that fails (strict xfail) until fixed
NOT_SEEN: dict[str, tuple[str, str]] = {
    # (none known: the large NumPy array and `importlib.import_module` cases are in CASES)
}


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=why))
    for name, (_, why) in NOT_SEEN.items()])
def test_not_seen_yet(name):
    eager, _, _ = run(NOT_SEEN[name][0], compiled=False)
    compiled, _, _ = run(NOT_SEEN[name][0], compiled=True)
    for i, (want, got) in enumerate(zip(eager, compiled)):
        same(got[0], want[0], f"{name}: call {i} result")


if __name__ == "__main__":          # the table of outcomes: python tests/test_compile_stale.py
    for name, source in CASES.items():
        try:
            print(f"{name:45s}", *outcome(source))
        except Exception as e:      # an error in compiled but not eager (or the reverse)
            print(f"{name:45s}", "error", repr(e)[:100])

