"""Scalar decompositions of the transcendental helpers, written once and spelled by every renderer.

A helper such as erf or tanh is a few lines of scalar math over a handful of base functions
(`exp`, `log`, `expm1`, `abs`, `where`). Each is written here once, as Python-syntax
expressions, and each renderer turns it into a function of its own language with a `Dialect`:
the C renderer into `static inline float kiln_erff(float a)`, the Triton one into a
`@triton.jit def _erf(a)`. The base functions are the renderer's own (C's are branch-free
Cephes polynomials on float bits, Triton's are `tl.exp` and friends).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Decomposition:
    """`result` computed from `params` through `steps`, each `(name, expression)` in order (a
    name may be assigned again: `r = r * t - 1.0`)."""

    params: tuple
    steps: tuple
    result: str
    comment: str


DECOMPOSITIONS: dict[str, Decomposition] = {
    "erf": Decomposition(("a",), (
        ("t", "abs(a)"),
        ("s", "a * a"),
        ("r", "-1.72853470e-5 * t + 3.83197126e-4"),
        ("u", "-3.88396438e-3 * t + 2.42546219e-2"),
        ("r", "r * s + u"),
        ("r", "r * t - 1.06777877e-1"),
        ("r", "r * t - 6.34846687e-1"),
        ("r", "r * t - 1.28717512e-1"),
        ("r", "r * t - t"),
        ("big", "1.0 - exp(r)"),
        ("big", "where(a < 0.0, -big, big)"),
        ("p", "-5.96761703e-4 * s + 4.99119423e-3"),
        ("p", "p * s - 2.67681349e-2"),
        ("p", "p * s + 1.12819925e-1"),
        ("p", "p * s - 3.76125336e-1"),
        ("p", "p * s + 1.28379166e-1"),
        ("small", "p * a + a"),
    ), "where(t > 0.927734375, big, small)",
        "erf(x): minimax approximations (N. Juffa), about 1 float32 ulp on each branch"),
    "log1p": Decomposition(("x",), (
        ("u", "1.0 + x"),
        ("d", "u - 1.0"),
        ("r", "log(u) * (x / d)"),
        ("r", "where(d == 0.0, x, r)"),
    ), "where(u == inf, u, r)",
        "log(1 + x) by Kahan's trick: log(u) * x / (u - 1) cancels the rounding of u = 1 + x"),
    "tanh": Decomposition(("x",), (
        ("e", "expm1(-2.0 * abs(x))"),
        ("t", "-e / (2.0 + e)"),
    ), "where(x < 0.0, -t, t)",
        "tanh(x) = -expm1(-2|x|) / (2 + expm1(-2|x|)), with the sign of x"),
    "sigmoid": Decomposition(("x",), (), "1.0 / (1.0 + exp(-x))", "1 / (1 + exp(-x))"),
    "sign": Decomposition(("x",), (
        ("s", "where(x > 0.0, 1.0, where(x < 0.0, -1.0, 0.0))"),
    ), "where(x != x, x, s)", "sign(x), NaN kept"),
}


@dataclass(frozen=True)
class Dialect:
    """How one renderer spells the scalar language.

    Args:
        calls: base function name -> the function it calls (`exp` -> `kiln_expf`).
        where: (condition, if true, if false) -> text.
        where_is_call: whether `where` reads as a call (Triton) or an operator of the lowest
            precedence (C's `?:`), which needs parentheses inside other expressions.
        number: a float constant, as written in the decomposition -> text.
        inf: the spelling of infinity.
    """

    calls: dict
    where: Callable
    where_is_call: bool
    number: Callable
    inf: str


_BINARY = {ast.Add: ("+", 1), ast.Sub: ("-", 1), ast.Mult: ("*", 2), ast.Div: ("/", 2)}
_COMPARE = {ast.Lt: "<", ast.Gt: ">", ast.LtE: "<=", ast.GtE: ">=", ast.Eq: "==",
            ast.NotEq: "!="}


def spell(expression: str, dialect: Dialect) -> str:
    """`expression` (the scalar language) in the dialect's syntax."""
    return _spell(ast.parse(expression, mode="eval").body, dialect, expression)[0]


def _spell(node, dialect: Dialect, source: str) -> tuple:
    """(text, precedence) of an expression node: 0 comparison, 1 +-, 2 */, 3 unary, 4 atom;
    C's `?:` is -1."""
    if isinstance(node, ast.Constant):
        if not isinstance(node.value, float):
            raise ValueError(f"scalar decomposition: write {node.value} as a float constant")
        return dialect.number(ast.get_source_segment(source, node)), 4
    if isinstance(node, ast.Name):
        return (dialect.inf if node.id == "inf" else node.id), 4
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        text, prec = _spell(node.operand, dialect, source)
        return "-" + (text if prec >= 3 else f"({text})"), 3
    if isinstance(node, ast.BinOp):
        sym, prec = _BINARY[type(node.op)]
        left, lp = _spell(node.left, dialect, source)
        right, rp = _spell(node.right, dialect, source)
        left = left if lp >= prec else f"({left})"
        right = right if rp > prec else f"({right})"
        return f"{left} {sym} {right}", prec
    if isinstance(node, ast.Compare):
        (op,), (other,) = node.ops, node.comparators
        left, lp = _spell(node.left, dialect, source)
        right, rp = _spell(other, dialect, source)
        left = left if lp >= 1 else f"({left})"
        right = right if rp >= 1 else f"({right})"
        return f"{left} {_COMPARE[type(op)]} {right}", 0
    if isinstance(node, ast.Call):
        name = node.func.id
        args = [_spell(a, dialect, source) for a in node.args]
        if name == "where":
            if dialect.where_is_call:
                return dialect.where(*(text for text, _ in args)), 4
            texts = [text if prec >= 0 else f"({text})" for text, prec in args]
            return dialect.where(*texts), -1
        return f"{dialect.calls[name]}({', '.join(text for text, _ in args)})", 4
    raise ValueError(f"scalar decomposition: cannot spell {ast.dump(node)}")


def function_body(d: Decomposition, dialect: Dialect, declare: str = "") -> list:
    """The statements computing `d` (a `return` last); `declare` prefixes a name's first
    assignment (C's type), and each statement ends as the dialect's statements end."""
    seen = set(d.params)
    lines = []
    for name, expression in d.steps:
        prefix = "" if name in seen else declare
        seen.add(name)
        lines.append(f"{prefix}{name} = {spell(expression, dialect)}")
    lines.append(f"return {spell(d.result, dialect)}")
    return lines


__all__ = ["DECOMPOSITIONS", "Decomposition", "Dialect", "function_body", "spell"]
