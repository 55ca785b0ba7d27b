"""Whether a value a call just produced leaves its function untouched: `return loss.item()`.

A traced `.item()` is a graph break, because Python may branch on the number. But when the
code returns the number straight away (`return loss.item()`, `return loss.item(), acc.item()`,
`return {"loss": loss.item()}`, `value = loss.item(); ...; return value`), nothing in the
function can see it, and a replay can read it from the program's output instead.
`returned_unseen(code, offset)` reads the bytecode after the call at `offset` and follows the
stack: the value may sit under other loads and calls (they cannot reach it), be packed into a
tuple, list or dict (as a value, not a key), or wait in a local through straight-line code
that reads it back once, and must reach RETURN_VALUE that way. Any other instruction, and any Python version whose bytecode this does
not know, answers False: the read stays a graph break.
"""

from __future__ import annotations

import dis
import functools
import sys

_KNOWN = (3, 11) <= sys.version_info[:2] <= (3, 12)
_ATTR_METHOD_BIT = sys.version_info >= (3, 12)     # LOAD_ATTR's low bit: a method load

# instructions that only push: how many
_PUSH = {"LOAD_FAST": 1, "LOAD_FAST_CHECK": 1, "LOAD_CONST": 1, "LOAD_DEREF": 1,
         "LOAD_CLOSURE": 1, "PUSH_NULL": 1}
_NOTHING = {"PRECALL", "KW_NAMES", "NOP", "CACHE"}
# instructions that pop operands and push one result: how many operands
_OPERATE = {"BINARY_OP": 2, "COMPARE_OP": 2, "BINARY_SUBSCR": 2, "IS_OP": 2, "CONTAINS_OP": 2,
            "UNARY_NEGATIVE": 1, "UNARY_NOT": 1, "UNARY_INVERT": 1, "UNARY_POSITIVE": 1}


# while the value sits in a local: what may run before that local is read back (straight-line
# code that cannot reach it: no jumps, no frame or namespace introspection)
_WHILE_KEPT = set(_PUSH) | set(_OPERATE) | {
    "LOAD_GLOBAL", "LOAD_METHOD", "LOAD_ATTR", "CALL", "BUILD_TUPLE", "BUILD_LIST", "BUILD_MAP",
    "BUILD_CONST_KEY_MAP", "STORE_FAST", "POP_TOP", "STORE_ATTR", "STORE_SUBSCR"}
_INTROSPECTION = {"locals", "vars", "eval", "exec", "globals", "f_locals", "_getframe",
                  "currentframe", "stack", "getouterframes", "dir"}
_LOADS = ("LOAD_FAST", "LOAD_FAST_CHECK")


@functools.lru_cache(maxsize=1024)
def returned_unseen(code, offset: int) -> bool:
    """Whether the value the call instruction at `offset` of `code` pushes is returned, alone
    or packed in a tuple, list or dict, with no instruction reading it on the way."""
    if not _KNOWN:
        return False
    instructions = list(dis.get_instructions(code))
    # the frame's last offset may point into the call's inline cache: the instruction is the
    # last one starting at or before it
    at = max((i for i, ins in enumerate(instructions) if ins.offset <= offset), default=None)
    if at is None or instructions[at].opname != "CALL":
        return False
    index = {ins.offset: i for i, ins in enumerate(instructions)}
    above = 0           # stack items above the value (or the container holding it)
    local = None        # the local the value was stored in (`value = loss.item()`), if any
    in_local = False    # whether the value is only there now, not on the stack
    i = at + 1
    while i < len(instructions):
        ins = instructions[i]
        name, arg = ins.opname, ins.arg or 0
        i += 1
        if name in _NOTHING:
            continue
        if in_local:                # straight-line code that does not look at the local
            if name in _LOADS and ins.argval == local:
                in_local, above = False, 0          # on the stack again, once
            elif (name not in _WHILE_KEPT or ins.argval == local
                  or ins.argval in _INTROSPECTION):
                return False
            continue
        if name in _LOADS and local is not None and ins.argval == local:
            return False                            # a second copy of it
        if name == "JUMP_FORWARD":          # past the other arm of `a if c else b`
            i = index[ins.argval]
            continue
        if name in _PUSH:
            above += _PUSH[name]
        elif name == "STORE_FAST" and above == 0 and local is None:
            local, in_local = ins.argval, True      # `value = loss.item()`
        elif name == "LOAD_GLOBAL":
            above += 1 + (arg & 1)
        elif name in ("LOAD_METHOD", "LOAD_ATTR"):
            if above < 1:
                return False                      # an attribute of the value itself
            method = name == "LOAD_METHOD" or (_ATTR_METHOD_BIT and arg & 1)
            above += 1 if method else 0
        elif name in _OPERATE:
            if above < _OPERATE[name]:
                return False                      # an operand: arithmetic, a comparison
            above -= _OPERATE[name] - 1
        elif name == "CALL":
            if above < arg + 2:
                return False                      # the value is an argument or the callee
            above -= arg + 1
        elif name in ("BUILD_TUPLE", "BUILD_LIST"):
            above = above - arg + 1 if above >= arg else 0
        elif name == "BUILD_MAP":
            if above >= 2 * arg:
                above = above - 2 * arg + 1
            elif above % 2 == 0:
                above = 0                         # a value of the dict
            else:
                return False                      # a key: hashed, compared
        elif name == "BUILD_CONST_KEY_MAP":
            if above >= arg + 1:
                above -= arg
            elif above >= 1:
                above = 0                         # one of the values
            else:
                return False
        elif name == "RETURN_VALUE":
            return above == 0
        else:
            return False
    return False
    return False
