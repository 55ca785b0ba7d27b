"""Spelling the scalar math of elementwise primitives (`Primitive.scalar`) in a renderer's language.

An op such as erf or tanh is a few lines of scalar math over a handful of base functions
(`exp`, `log`, `expm1`, `abs`, `where`), written once beside the primitive as a `ScalarMath`.
Each renderer turns it into a helper function of its own language with a `Dialect`: the C
renderer into `static inline float kiln_erff(float a)`, the Triton one into a `@triton.jit def
_erf(a)`. The base functions are the renderer's own (C's are branch-free Cephes polynomials on
float bits, Triton's are `tl.exp` and friends); a call to another primitive with scalar math
(`log1p(exp(x))`) calls that primitive's helper.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Callable

from kiln.ir.ops import PRIMITIVES
from kiln.ir.primitive import ScalarMath

BASE_FUNCTIONS = ("exp", "log", "expm1", "abs")


def decompositions() -> dict:
    """Every primitive's scalar math, by primitive name: the one table both renderers spell."""
    return {name: p.scalar for name, p in PRIMITIVES.items() if p.scalar is not None}


@dataclass(frozen=True)
class Dialect:
    """How one renderer spells the scalar language.

    Args:
        calls: base function name -> the function it calls (`exp` -> `kiln_expf`).
        helper: a primitive's name -> the name of the helper function computing it.
        where: (condition, if true, if false) -> text.
        where_is_call: whether `where` reads as a call (Triton) or an operator of the lowest
            precedence (C's `?:`), which needs parentheses inside other expressions.
        number: a float constant, as written in the decomposition -> text.
        inf: the spelling of infinity.
    """

    calls: dict
    helper: Callable
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
        if name in dialect.calls:
            fn = dialect.calls[name]
        elif getattr(PRIMITIVES.get(name), "scalar", None) is not None:
            fn = dialect.helper(name)
        else:
            raise ValueError(f"scalar math: {name}() is neither a base function "
                             f"{BASE_FUNCTIONS} nor a primitive with scalar math")
        return f"{fn}({', '.join(text for text, _ in args)})", 4
    raise ValueError(f"scalar decomposition: cannot spell {ast.dump(node)}")


def function_body(d: ScalarMath, dialect: Dialect, declare: str = "") -> list:
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


__all__ = ["BASE_FUNCTIONS", "Dialect", "decompositions", "function_body", "spell"]
