"""torch._dynamo.backends.common's `aot_autograd`: a backend built from graph compilers.

PyTorch's AOTAutograd traces a function's forward and backward into two graphs and hands them
to `fw_compiler` and `bw_compiler`. kiln hands `fw_compiler` kiln.fx's GraphModule of the
function with the call's example tensors (kiln.compiler.BackendFunction), and kiln's autograd
differentiates what the compiled forward runs: there is no separate backward graph to hand
over. So `bw_compiler` may only be a compiler that leaves its graph as it is (`get_nop_func()`,
`nop`, None); another one is refused when the backend is made, as are `decompositions`
(kiln has no table of aten operators for them to replace).
"""

from __future__ import annotations

from kiln._dynamo.backends.debugging import nop


class AotAutograd:
    """A backend callable, `backend(gm, example_inputs)`, as kiln.compile(backend=...) takes:
    what `fw_compiler(gm, example_inputs)` returns runs the function."""

    def __init__(self, fw_compiler=None, bw_compiler=None, decompositions=None,
                 inference_compiler=None, **kwargs):
        if decompositions:
            raise NotImplementedError(
                "aot_autograd(decompositions=...): kiln has no aten operator table "
                f"(torch.ops.aten.*) to apply {len(decompositions)} decomposition(s) to; "
                "pass decompositions=None")
        if bw_compiler not in (None, nop):
            raise NotImplementedError(
                f"aot_autograd(bw_compiler={getattr(bw_compiler, '__name__', bw_compiler)}): "
                "kiln differentiates the compiled forward with its own autograd and has no "
                "backward graph to hand a compiler; pass get_nop_func() or None")
        self.fw_compiler = fw_compiler or nop
        self.kwargs = kwargs

    def __call__(self, gm, example_inputs):
        run = self.fw_compiler(gm, example_inputs)
        if getattr(run, "_boxed_call", False):       # PyTorch's boxed calling convention
            return lambda *args: run(list(args))
        return run


def aot_autograd(**kwargs) -> AotAutograd:
    """`aot_autograd(fw_compiler=..., bw_compiler=..., decompositions=...)`: a backend for
    kiln.compile(fn, backend=...) (see the module's note on what kiln honours)."""
    return AotAutograd(**kwargs)
