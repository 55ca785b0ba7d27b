"""Module backward hooks: `register_full_backward_pre_hook` (sees the gradients of the
module's outputs and may replace them) and `register_full_backward_hook` (sees the gradients
of its inputs and outputs and may replace the input gradients).

The module's tensor inputs are passed through an identity (`clone`) whose gradient hook
captures each input gradient; its outputs get tensor hooks for the output gradients. A hook
fires once all the gradients it reports have arrived.
"""

from __future__ import annotations

from kiln import Tensor


class BackwardHookCall:
    """The bookkeeping of one forward call of a module with backward hooks."""

    def __init__(self, module, n_args: int, full_hooks: list, pre_hooks: list) -> None:
        """`full_hooks` and `pre_hooks`: the global hooks, then the module's own, as they
        stand at the forward call."""
        self.module = module
        self.full_hooks, self.pre_hooks = full_hooks, pre_hooks
        self.n_args = n_args
        self.input_positions: list[int] = []
        self.grad_inputs: dict[int, Tensor] = {}
        self.n_outputs = 0
        self.grad_outputs: dict[int, Tensor] = {}
        self.grad_output_tuple: tuple | None = None

    # inputs ---------------------------------------------------------------------------
    def wrap_inputs(self, args: tuple) -> tuple:
        if not self.full_hooks:
            return args
        wrapped = list(args)
        for i, a in enumerate(args):
            if isinstance(a, Tensor) and a.requires_grad:
                identity = a.clone()
                self.input_positions.append(i)
                identity.register_hook(lambda g, i=i: self._input_grad(i, g))
                wrapped[i] = identity
        return tuple(wrapped)

    def _input_grad(self, index: int, grad: Tensor):
        self.grad_inputs[index] = grad
        if len(self.grad_inputs) < len(self.input_positions):
            return None
        grad_input = tuple(self.grad_inputs.get(i) for i in range(self.n_args))
        replaced = self._run_full_hooks(grad_input)
        if replaced is not None:
            return replaced[index]
        return None

    def _run_full_hooks(self, grad_input: tuple):
        grad_output = self.grad_output_tuple or ()
        result = None
        for hook in self.full_hooks:
            out = hook(self.module, grad_input if result is None else result, grad_output)
            if out is not None:
                result = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        return result

    # outputs --------------------------------------------------------------------------
    def wrap_outputs(self, output):
        tensors = [t for t in (output if isinstance(output, (tuple, list)) else (output,))
                   if isinstance(t, Tensor) and t.requires_grad]
        self.n_outputs = len(tensors)
        for k, t in enumerate(tensors):
            t.register_hook(lambda g, k=k: self._output_grad(k, g))
        return output

    def _output_grad(self, index: int, grad: Tensor):
        self.grad_outputs[index] = grad
        if len(self.grad_outputs) < self.n_outputs:
            return None
        grads = tuple(self.grad_outputs[k] for k in range(self.n_outputs))
        for hook in self.pre_hooks:
            out = hook(self.module, grads)
            if out is not None:
                grads = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        self.grad_output_tuple = grads
        if not self.input_positions and self.full_hooks:
            # no input needs a gradient: the hook reports None for each, as in PyTorch
            self._run_full_hooks((None,) * self.n_args)
        return grads[index]
