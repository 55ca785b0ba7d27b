"""SparseAdam: Adam for sparse gradients (an embedding's `sparse=True`), updating only the rows
a gradient names.

Adam's moments of a row that is not looked up stay as they are (dense Adam would decay them and
still move the row), so the table's step costs the looked-up rows, not the whole table. The
arithmetic is PyTorch's, in its order, so parameters agree to float32 rounding.
"""

from __future__ import annotations

import math

import kiln
from kiln import Tensor
from kiln.optim.optimizer import Optimizer, ParamsT


class SparseAdam(Optimizer):
    """`torch.optim.SparseAdam`: parameters with sparse gradients only; pair it with Adam for
    the dense rest of a model (`SparseAdam(list(emb.parameters()))` + `Adam(rest)`)."""

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple = (0.9, 0.999),
                 eps: float = 1e-8, maximize: bool = False):
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 < lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 < eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, maximize=maximize))
        places = [([g, i], p) for g, group in enumerate(self.param_groups)
                  for i, p in enumerate(group["params"])]
        sparse = [at for at, p in places if p.is_sparse]
        if sparse:
            raise ValueError(f"Sparse params at indices {sparse}: SparseAdam requires dense "
                             f"parameter tensors")
        complex_ = [at for at, p in places if p.is_complex()]
        if complex_:
            raise ValueError(f"Complex params at indices {complex_}: SparseAdam does not "
                             f"support complex parameters")

    def _check_sparse_grad(self, group) -> None:
        pass                        # sparse gradients are what it is for

    def _update(self, p, group) -> None:
        if not p.grad.is_sparse:
            raise RuntimeError("SparseAdam does not support dense gradients, please consider "
                               "Adam instead")
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = kiln.zeros_like(p)
            state["exp_avg_sq"] = kiln.zeros_like(p)
        state["step"] = int(state["step"]) + 1
        grad = (-p.grad if group["maximize"] else p.grad).coalesce()
        if grad._nnz() == 0:
            return                  # nothing looked up: no row moves
        rows, values = tuple(grad._indices()), grad._values()
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        # each moment moves toward the new value by (1 - beta): old + (new - old) * (1 - beta)
        old_avg, old_sq = exp_avg[rows], exp_avg_sq[rows]
        avg = (values - old_avg) * (1 - beta1) + old_avg
        sq = (values * values - old_sq) * (1 - beta2) + old_sq
        exp_avg[rows], exp_avg_sq[rows] = avg, sq
        step = state["step"]
        lr = float(group["lr"])
        step_size = lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
        p[rows] = p[rows] + -step_size * (avg / (sq.sqrt() + group["eps"]))
