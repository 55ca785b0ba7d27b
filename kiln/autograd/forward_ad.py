"""`kiln.autograd.forward_ad`: forward-mode AD with dual tensors (torch.autograd.forward_ad).

    with forward_ad.dual_level():
        x = forward_ad.make_dual(primal, tangent)
        y = f(x)
        jvp = forward_ad.unpack_dual(y).tangent     # J_f(primal) @ tangent

kiln computes a tangent when `unpack_dual` asks for it, by the double-vjp trick applied node by
node (see kiln/tracer/forward_ad.py), and keeps it until the level exits. Tangents are plain
tensors (not differentiable further). A custom `autograd.Function` with a `jvp` staticmethod
has it called right after its forward, as in PyTorch; one without `jvp` gets tangents derived
from its `backward` (PyTorch raises NotImplementedError there).

Departures from PyTorch, which keeps tangents beside the values:
- a dual tensor, and what is computed from it, requires grad (it is how kiln records the ops
  a tangent needs), even where the primal did not; `backward()` through them reaches only the
  tensors that required grad before. `unpack_dual(y).primal` does not require grad unless y's
  history reaches a tensor that did.
- ops run under `no_grad()` record nothing, so their results have no tangent (None).
- a tangent must be asked for before a `backward()` frees the graph it needs (else a
  RuntimeError says so), and in-place writes to tensors it reads raise the usual version
  error.
"""

from __future__ import annotations

import collections
import contextlib

from kiln.tracer.forward_ad import enter_dual_level, exit_dual_level, make_dual
from kiln.tracer.forward_ad import unpack_dual as _unpack_dual

__all__ = ["dual_level", "make_dual", "unpack_dual", "enter_dual_level", "exit_dual_level",
           "UnpackedDualTensor"]

UnpackedDualTensor = collections.namedtuple("UnpackedDualTensor", ["primal", "tangent"])


def unpack_dual(tensor, *, level: int | None = None) -> UnpackedDualTensor:
    """`UnpackedDualTensor(primal, tangent)`: the tangent is None for a tensor that depends
    on no dual tensor of the level (and outside a level)."""
    return UnpackedDualTensor(*_unpack_dual(tensor, level=level))


class dual_level(contextlib.ContextDecorator):
    """The block in which dual tensors live; their tangents are dropped when it exits."""

    def __enter__(self) -> int:
        self.level = enter_dual_level()
        return self.level

    def __exit__(self, *exc) -> bool:
        exit_dual_level(level=self.level)
        return False
