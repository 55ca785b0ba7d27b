"""A number argument lifted to a graph input: the proxy a compiled function's trace receives in
its place, and the one use that keeps it symbolic.

A compiled function whose `int`/`float` argument changed value is traced once more with a
`SymbolicNumber` there. The proxy behaves as its number in every Python use (`float(lr)`,
`range(i)`, `lr ** 0.5`, a shape, a hash, a format, `isinstance(lr, float)`), and each
such use marks it `specialised`: the trace may have baked its value into Python decisions, so
the compiler keeps it as that value's entry only and keys the argument by value from then on.
The one use left unmarked is an elementwise op's number operand (`x * lr`, `lr - x`, `x / i`,
`x > t`: `functional.common._binary`), which `Tracer.number_input` makes a 0-d graph input
holding the number as eager's NumPy kernel takes it (`operand_array`: converted to the op's
promoted dtype), so a replay reads the new value and computes the same bits as eager does with
the plain number. With a float16 or bfloat16 CPU tensor the input is what that op's eager kernel
takes (`functional.common._with_half`): a float32 in mul and div, else the number rounded to the
half dtype through float32, the op computed in float32 and rounded once. Arithmetic on proxies
and plain numbers (`1 - lam`, `lr * 0.5`, `0.9 ** t`, `bc ** 0.5`: `_ARITHMETIC`) gives a
derived proxy, its value computed as Python computes it and its `where` the expression, which a
replay evaluates from the call's arguments with the same Python arithmetic (`evaluate`): the
number an op takes is eager's to the bit. A comparison of proxies and numbers (or a proxy's
`bool`) gives a plain bool and notes its expression and that bool on the arguments
(`_condition`): the compiler guards the entry on it instead of keying the arguments by value.
Any other use of a derived proxy specialises the arguments it was computed from.

A number held in Python state that a compiled step changes (a hand-written Adam's
`state["step"] += 1`, a trainer's `self.n += 1`) is lifted the same way (`compiler`'s
`_lift_counters`): its proxy's `where` is ("state", read), `read` the place's reader, which a
replay calls for the value the place holds when the call begins.
"""

from __future__ import annotations

import contextlib
import math
import operator

import numpy as np

from kiln.ir import dtypes as dt

# the dtypes an operand is lifted in: those whose eager kernels take a Python number as NumPy
# converts it (float16/bfloat16 convert it op by op: `_binary` lifts it on the CPU as the op
# takes it; complex is not compiled: specialise there)
_LIFTED_DTYPES = frozenset({dt.float32, dt.float64, dt.int8, dt.int16, dt.int32, dt.int64,
                            dt.uint8})


class SymbolicNumber:
    """The number `value` of argument `where` ((position, None) or (None, keyword)), as a
    trace sees it; `specialised` once any use but an op operand or a comparison read it into
    Python."""

    __slots__ = ("value", "where", "name", "specialised", "operands", "conditions")

    def __init__(self, value, where: tuple, name: str, operands: tuple = ()):
        self.value = value
        self.where = where              # (position, keyword), ("state", read), or an expression
        self.name = name
        self.specialised = None         # None, or what read the value (for messages)
        self.operands = operands        # the proxies a derived one was computed from
        self.conditions = {}            # an argument's: `_condition`'s expression -> its bool

    def specialise(self, why: str = "read into Python"):
        """The plain number, noting that the trace depends on its value (and so on the values
        of the arguments a derived proxy was computed from)."""
        if self.specialised is None:
            self.specialised = why
            for operand in self.operands:
                operand.specialise(why)
        return self.value

    # isinstance(lr, float) answers as for the number (kiln's own checks for Tensor too)
    @property
    def __class__(self):
        return type(self.value)

    def __getattr__(self, name):        # lr.is_integer(), i.bit_length(), i.real, ...
        # (`getattr(n, "dtype", None)`, and `__dict__`, which a number's type has and the
        # number not: kiln's own probes of an object holding a lifted number read nothing)
        if not hasattr(self.value, name):
            raise AttributeError(f"'{type(self.value).__name__}' object has no attribute "
                                 f"'{name}'")
        return getattr(self.specialise(f".{name}"), name)

    def __repr__(self):
        return repr(self.specialise("repr"))

    def __str__(self):
        return str(self.specialise("str"))

    def __format__(self, spec):
        return format(self.specialise("format"), spec)

    def __hash__(self):
        return hash(self.specialise("hash"))

    def __bool__(self):
        if self.specialised is None and type(self.value) in _NUMBER_TYPES:
            return _condition(bool, (self,))
        return bool(self.specialise("bool"))

    def __float__(self):
        return float(self.specialise("float"))

    def __int__(self):
        return int(self.specialise("int"))

    def __index__(self):
        return self.specialise("index").__index__()

    def __complex__(self):
        return complex(self.specialise("complex"))

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.specialise("NumPy"), dtype=dtype)

    def __reduce_ex__(self, protocol):      # copy, deepcopy, pickle: the plain number
        return self.specialise("copy").__reduce_ex__(protocol)


def _plain(x):
    return x.specialise() if type(x) is SymbolicNumber else x


# the arithmetic that gives a derived proxy: (function, reflected), of an int or float proxy
# and int or float operands (no bool; NumPy's scalars too, computed by NumPy's rules at the
# trace and in each replay alike); a result's type then follows from the operands' types
# alone, as the entry a lifted argument keys by type needs (`**` where the sign of its base or
# exponent decides, while a guard holds it: `_power_guard`)
_ARITHMETIC = {"__add__": (operator.add, False), "__radd__": (operator.add, True),
               "__sub__": (operator.sub, False), "__rsub__": (operator.sub, True),
               "__mul__": (operator.mul, False), "__rmul__": (operator.mul, True),
               "__truediv__": (operator.truediv, False),
               "__rtruediv__": (operator.truediv, True),
               "__pow__": (operator.pow, False), "__rpow__": (operator.pow, True),
               "__floordiv__": (operator.floordiv, False),
               "__rfloordiv__": (operator.floordiv, True),
               "__mod__": (operator.mod, False), "__rmod__": (operator.mod, True),
               "__neg__": (operator.neg, False), "__pos__": (operator.pos, False),
               "__abs__": (operator.abs, False)}
# comparisons, which give a plain bool and make the call's entry hold only while the same
# comparison of the call's arguments gives the same bool (`_condition`)
_COMPARISONS = {"__eq__": operator.eq, "__ne__": operator.ne, "__lt__": operator.lt,
                "__le__": operator.le, "__gt__": operator.gt, "__ge__": operator.ge}
_FLOATS = (float, np.float64, np.float32)
_INTS = (int, np.int64, np.int32)
_NUMBER_TYPES = _FLOATS + _INTS        # the argument types a compiled function lifts


def _derived(name: str, proxy: SymbolicNumber, others: tuple):
    """`proxy`'s dunder `name` with `others` as a derived proxy, or None where it is not one
    (`_ARITHMETIC`)."""
    fn, reflected = _ARITHMETIC[name]
    if type(proxy.value) not in _NUMBER_TYPES or proxy.specialised is not None or \
            any(type(o.value if type(o) is SymbolicNumber else o) not in _NUMBER_TYPES
                for o in others):
        return None
    operands = (others[0], proxy) if reflected else (proxy, *others)
    guard = _power_guard(*operands) if fn is operator.pow else ()
    if guard is None:
        return None
    value = fn(*map(_plain_value, operands))
    if type(value) not in _NUMBER_TYPES:
        return None
    if guard:
        _condition(operator.ge, guard)
    keys = tuple(_key(o) for o in operands)
    derived = SymbolicNumber(value, ("expr", fn, keys), _derived_name(proxy.name),
                             tuple(o for o in operands if type(o) is SymbolicNumber))
    if fn is operator.pow or fn in _DIVISIONS and type(operands[1]) is SymbolicNumber:
        _condition(computes, (derived,))
    return derived


_DIVISIONS = (operator.truediv, operator.floordiv, operator.mod)


def _derived_name(name: str) -> str:
    """A derived proxy's name, for the graph input it becomes: its first operand's, marked
    once (`it_expr` for `0.5 * (1 + math.cos(math.pi * it / 12))`, not one mark per op)."""
    return name if name.endswith("_expr") else f"{name}_expr"


def computes(value) -> bool:
    """The function of a condition on a derived number that may raise (a division by a
    proxy, a power, a `math` function): its expression evaluated without the
    ZeroDivisionError, OverflowError or math domain error eager would raise there, which a
    replay would skip where the number is not an input of the program (a guard: such a call
    traces, and raises as eager does)."""
    return True


def _power_guard(base, exponent):
    """For `base ** exponent` as a derived proxy: () where its type follows from the operands'
    types alone (a float to an int power); (operand, 0) where it does while `operand >= 0`
    holds, which then guards the entry (an int to an int power is an int for a non-negative
    exponent, a float otherwise; a float power is real for a non-negative base, complex for
    some negative ones); None where neither (a negative constant to a float power)."""
    b, e = _plain_value(base), _plain_value(exponent)
    if type(e) in _INTS:
        if type(b) in _FLOATS or type(exponent) is not SymbolicNumber:
            return ()
        return (exponent, 0)
    if b < 0:
        return None
    return (base, 0) if type(base) is SymbolicNumber else ()


def _plain_value(x):
    return x.value if type(x) is SymbolicNumber else x


def _key(o) -> tuple:
    # an expression names its proxies by their places (hashing a proxy would read it) and
    # keeps its numbers with their spelling (equal keys: -0.0 is not 0.0, 1 is not 1.0)
    return ("at", o.where) if type(o) is SymbolicNumber else ("number", o, repr(o))


def _condition(fn, operands: tuple) -> bool:
    """`fn(*operands)` (a comparison, or `bool`) of proxies and numbers as a plain bool, noted
    on the arguments the proxies were computed from: the trace took this bool, not the
    numbers, into Python (`if (step + 1) % accumulate == 0:`), so its entry is good for every
    call whose arguments give the same bool (a guard of the compiled entry) and the arguments
    stay lifted. Whatever the bool is then used for, the trace depended on nothing else."""
    value = bool(fn(*map(_plain_value, operands)))
    expression = ("expr", fn, tuple(_key(o) for o in operands))
    stack = [o for o in operands if type(o) is SymbolicNumber]
    while stack:
        proxy = stack.pop()
        if proxy.operands:
            stack.extend(proxy.operands)
        else:
            proxy.conditions[expression] = value
    return value


def _forward(name: str):
    """A dunder that computes with the plain number (and marks the proxy), except with a
    tensor, which takes the reflected op (`lr * x` is `x.__rmul__(lr)`), and arithmetic with
    numbers, which gives a derived proxy (`_ARITHMETIC`)."""
    def method(self, *others):
        from kiln.tracer.tensor import Tensor
        if others and isinstance(others[0], Tensor):
            return NotImplemented
        if name in _ARITHMETIC:
            derived = _derived(name, self, others)
            if derived is not None:
                return derived
        if name in _COMPARISONS and self.specialised is None and \
                type(self.value) in _NUMBER_TYPES and \
                type(_plain_value(others[0])) in _NUMBER_TYPES:
            return _condition(_COMPARISONS[name], (self, others[0]))
        value, plain = self.specialise(name), [_plain(o) for o in others]
        result = getattr(value, name)(*plain)
        if result is NotImplemented and len(plain) == 1 and name[2:-2] in _OPERATORS:
            # `int.__mul__(0.5)` declines, and Python would then ask the float about the proxy:
            # the operator of the two plain numbers, as Python applies it to them
            fn, reflected = _OPERATORS[name[2:-2]]
            return fn(plain[0], value) if reflected else fn(value, plain[0])
        return result
    method.__name__ = name
    return method


# binary dunders by name (without underscores): the operator, and whether it is reflected
_BINARY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul,
           "truediv": operator.truediv, "floordiv": operator.floordiv, "mod": operator.mod,
           "pow": operator.pow, "lshift": operator.lshift, "rshift": operator.rshift,
           "and": operator.and_, "or": operator.or_, "xor": operator.xor,
           "matmul": operator.matmul, "divmod": divmod}
_OPERATORS = {**{name: (fn, False) for name, fn in _BINARY.items()},
              **{"r" + name: (fn, True) for name, fn in _BINARY.items()},
              **{name[2:-2]: (fn, False) for name, fn in _COMPARISONS.items()}}


def evaluate(where: tuple, args, kwargs):
    """The number at `where` in a call with `args` and `kwargs`: the argument (position,
    keyword), a place in Python state ("state", read), or a derived proxy's expression computed
    from them as the trace computed it."""
    if where[0] == "state":
        return where[1]()
    if where[0] != "expr":
        position, keyword = where
        return args[position] if keyword is None else kwargs[keyword]
    return where[1](*[evaluate(key[1], args, kwargs) if key[0] == "at" else key[1]
                      for key in where[2]])


_SYMBOLS = {operator.add: ("+", 1), operator.sub: ("-", 1), operator.mul: ("*", 2),
            operator.truediv: ("/", 2), operator.floordiv: ("//", 2), operator.mod: ("%", 2),
            operator.pow: ("**", 4), operator.eq: ("==", 0), operator.ne: ("!=", 0),
            operator.lt: ("<", 0), operator.le: ("<=", 0), operator.gt: (">", 0),
            operator.ge: (">=", 0)}


def describe(where: tuple, names: dict) -> str:
    """`where` (an argument's place or an expression) in Python's spelling, the arguments by
    their names (`names`: place -> name): `(step + 1) % 4 == 0`."""
    return _spelled(where, names)[0]


def _spelled(where: tuple, names: dict) -> tuple:
    """(the text, how tightly its operator binds: `_SYMBOLS`' levels, 5 for an operand)."""
    if where[0] != "expr":
        return names.get(where, f"argument {where[0] if where[1] is None else where[1]}"), 5
    fn, keys = where[1], where[2]
    parts = [_spelled(key[1], names) if key[0] == "at" else (key[2], 5) for key in keys]
    if fn in _SYMBOLS and len(parts) == 2:
        symbol, level = _SYMBOLS[fn]
        (left, a), (right, b) = parts
        left = f"({left})" if a < level else left
        right = f"({right})" if b < level or b == level and level else right
        return f"{left} {symbol} {right}", level
    if fn is operator.neg or fn is operator.pos:
        text, level = parts[0]
        return f"{'-' if fn is operator.neg else '+'}{f'({text})' if level < 3 else text}", 3
    return f"{getattr(fn, '__name__', fn)}({', '.join(p for p, _ in parts)})", 5


for _name in ("add", "radd", "sub", "rsub", "mul", "rmul", "truediv", "rtruediv", "floordiv",
              "rfloordiv", "mod", "rmod", "divmod", "rdivmod", "pow", "rpow", "lshift",
              "rlshift", "rshift", "rrshift", "and", "rand", "or", "ror", "xor", "rxor",
              "matmul", "rmatmul", "eq", "ne", "lt", "le", "gt", "ge", "neg", "pos", "abs",
              "invert", "round", "trunc", "floor", "ceil"):
    setattr(SymbolicNumber, f"__{_name}__", _forward(f"__{_name}__"))
del _name


# the math module's functions of one number that give a derived proxy of a proxy while a trace
# runs with lifted numbers (`math_of_proxies`): a float, or the same error eager raises
_MATH = ("sqrt", "exp", "log", "log2", "log10", "log1p", "expm1", "cos", "sin", "tan", "acos",
         "asin", "atan", "cosh", "sinh", "tanh", "fabs")


def _math_function(fn):
    """`fn` (one of `_MATH`) taking a proxy to a derived proxy, any other number as itself."""
    def function(x, *more):
        if type(x) is SymbolicNumber and not more and x.specialised is None and \
                type(x.value) in _NUMBER_TYPES:
            derived = SymbolicNumber(fn(x.value), ("expr", fn, (_key(x),)),
                                     _derived_name(x.name), (x,))
            _condition(computes, (derived,))
            return derived
        return fn(_plain(x), *map(_plain, more))
    function.__name__ = fn.__name__
    function.__wrapped__ = fn
    return function


@contextlib.contextmanager
def math_of_proxies():
    """While a trace runs with lifted numbers: `math.sqrt(1 - b2 ** step)` and the other `_MATH`
    functions, looked up on the module as they are called, give a derived proxy (the value
    eager computes, computed by the same function from each call's numbers), where the proxy
    would otherwise be read into Python (`float`). `from math import sqrt` keeps the plain
    function, which reads it (the argument is then keyed by value, as before)."""
    _MATH_USERS[0] += 1
    if _MATH_USERS[0] == 1:
        for name, fn in _MATH_FUNCTIONS.items():
            setattr(math, name, _math_function(fn))
    try:
        yield
    finally:
        _MATH_USERS[0] -= 1
        if _MATH_USERS[0] == 0:
            for name, fn in _MATH_FUNCTIONS.items():
                setattr(math, name, fn)


# math's own functions, as imported (traces in two threads put back these, not each other's),
# and how many traces take proxies there now
_MATH_FUNCTIONS = {name: getattr(math, name) for name in _MATH}
_MATH_USERS = [0]


def lifts(dtype) -> bool:
    """Whether a number operand promoted to `dtype` becomes a graph input (else specialised)."""
    return dtype in _LIFTED_DTYPES


def operand_array(value, dtype, xp=np):
    """The 0-d array of `dtype` holding a number operand as eager's kernel takes it: a float
    rounded to `dtype` (to float16/bfloat16 through float32, as `dtypes.half_value`), an int
    wrapped into an integer dtype (`_cast_operand`'s conversions)."""
    if dtype in dt.HALF:
        number = dt.half_value(value, dtype)
    elif dtype.is_floating_point:
        number = float(value)
    else:
        number = dt.wrapped_int(int(value), dtype)
    return xp.asarray(np.asarray(number, dtype=dtype.np_dtype))
