"""L-BFGS: a quasi-Newton method over all parameters as one flat vector (`torch.optim.LBFGS`).

Each `step(closure)` runs up to `max_iter` iterations. The search direction is the two-loop
recursion over the last `history_size` curvature pairs (s = step taken, y = change of
gradient), scaled by the usual gamma = s.y / y.y; the step length is `lr` (the first one
scaled by 1 / |g|_1), or comes from a strong-Wolfe line search. The iteration and stopping
tests follow PyTorch's order, so the iterates agree with PyTorch's.

It reads values into Python at every iteration (norms, line-search tests), so it runs eagerly.
"""

from __future__ import annotations

from typing import Callable

import kiln
from kiln import Tensor
from kiln.compiler import note_grads_checked
from kiln.optim.optimizer import Optimizer, ParamsT, _check_nonnegative


class LBFGS(Optimizer):
    def __init__(self, params: ParamsT, lr: float = 1, max_iter: int = 20,
                 max_eval: int | None = None, tolerance_grad: float = 1e-7,
                 tolerance_change: float = 1e-9, history_size: int = 100,
                 line_search_fn: str | None = None):
        _check_nonnegative(lr=lr)
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        if line_search_fn not in (None, "strong_wolfe"):
            raise RuntimeError("LBFGS: only 'strong_wolfe' is supported as line_search_fn")
        super().__init__(params, dict(lr=lr, max_iter=max_iter, max_eval=max_eval,
                                      tolerance_grad=tolerance_grad,
                                      tolerance_change=tolerance_change,
                                      history_size=history_size, line_search_fn=line_search_fn))
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        self._params = self.param_groups[0]["params"]

    # ------------------------------------------------------------------ the flat vector
    def _flat_grad(self) -> Tensor:
        # a sparse gradient (an embedding's sparse=True) taken dense, as PyTorch's LBFGS does
        return kiln.cat([(p.grad.to_dense() if p.grad.is_sparse else p.grad).reshape(-1)
                         if p.grad is not None
                         else kiln.zeros(p.numel(), dtype=p.dtype, device=p.device)
                         for p in self._params])

    def _move(self, t: float, direction: Tensor) -> None:
        """params += t * direction, slice by slice."""
        at = 0
        for p in self._params:
            n = p.numel()
            p.add_(direction[at:at + n].reshape(tuple(p.shape)) * t)
            at += n

    def _values(self) -> list:
        return [p.detach().clone() for p in self._params]

    def _restore(self, values: list) -> None:
        for p, v in zip(self._params, values):
            p.copy_(v)

    def _evaluate_at(self, closure, start: list, t: float, direction: Tensor):
        """Loss and flat gradient at start + t * direction; the parameters are put back."""
        self._move(t, direction)
        loss = float(closure())
        grad = self._flat_grad()
        self._restore(start)
        return loss, grad

    # ------------------------------------------------------------------ one step
    def step(self, closure: Callable):  # type: ignore[override]
        if closure is None:
            raise RuntimeError("LBFGS.step needs a closure that re-evaluates the model and "
                               "returns the loss")
        note_grads_checked()
        with kiln.no_grad():
            return self._step(closure)

    def _step(self, closure):
        def evaluate():
            with kiln.enable_grad():
                return closure()

        group = self.param_groups[0]
        lr, max_iter, max_eval = group["lr"], group["max_iter"], group["max_eval"]
        tol_grad, tol_change = group["tolerance_grad"], group["tolerance_change"]
        history = group["history_size"]
        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)

        first_loss = evaluate()
        loss = float(first_loss)
        evals = 1
        state["func_evals"] += 1
        grad = self._flat_grad()
        if float(grad.abs().max()) <= tol_grad:
            return first_loss

        d, t = state.get("d"), state.get("t")
        dirs, steps, rho = state.get("old_dirs"), state.get("old_stps"), state.get("ro")
        h_diag, prev_grad = state.get("H_diag"), state.get("prev_flat_grad")
        prev_loss = state.get("prev_loss")
        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1
            if state["n_iter"] == 1:
                d = -grad
                dirs, steps, rho, h_diag = [], [], [], 1.0
            else:
                y = grad - prev_grad
                s = d * t
                ys = float(kiln.dot(y, s))
                if ys > 1e-10:        # keep only pairs with positive curvature
                    if len(dirs) == history:
                        dirs.pop(0)
                        steps.pop(0)
                        rho.pop(0)
                    dirs.append(y)
                    steps.append(s)
                    rho.append(1.0 / ys)
                    h_diag = ys / float(kiln.dot(y, y))
                # the first loop's coefficients stay in the state under "al", as PyTorch's do
                alphas = state.setdefault("al", [None] * history)
                d = self._two_loop(grad, dirs, steps, rho, h_diag, alphas)
            prev_grad = grad.clone()
            prev_loss = loss
            t = (min(1.0, 1.0 / float(grad.abs().sum())) * lr if state["n_iter"] == 1
                 else lr)
            slope = float(kiln.dot(grad, d))
            if slope > -tol_change:          # not a descent direction any more
                break
            used = 0
            if group["line_search_fn"] == "strong_wolfe":
                start = self._values()
                loss, grad, t, used = _strong_wolfe(
                    lambda step: self._evaluate_at(evaluate, start, step, d),
                    t, d, loss, grad, slope, max_ls=max_eval - evals,
                    tolerance_change=tol_change)
                self._move(t, d)
            else:
                self._move(t, d)
                if n_iter != max_iter:
                    loss = float(evaluate())
                    grad = self._flat_grad()
                    used = 1
            evals += used
            state["func_evals"] += used
            if n_iter == max_iter or evals >= max_eval:
                break
            if float(grad.abs().max()) <= tol_grad:
                break
            if float((d * t).abs().max()) <= tol_change or abs(loss - prev_loss) < tol_change:
                break
        state.update(d=d, t=t, old_dirs=dirs, old_stps=steps, ro=rho, H_diag=h_diag,
                     prev_flat_grad=prev_grad, prev_loss=prev_loss)
        return first_loss

    @staticmethod
    def _two_loop(grad: Tensor, dirs: list, steps: list, rho: list, h_diag: float,
                  alphas: list) -> Tensor:
        """The L-BFGS direction -H g from the stored (s, y) pairs; the first loop's
        coefficients are written into `alphas` (at least as long as the history)."""
        q = -grad
        for i in range(len(dirs) - 1, -1, -1):
            alphas[i] = float(kiln.dot(steps[i], q)) * rho[i]
            q = q - dirs[i] * alphas[i]
        r = q * h_diag
        for i in range(len(dirs)):
            beta = float(kiln.dot(dirs[i], r)) * rho[i]
            r = r + steps[i] * (alphas[i] - beta)
        return r


# ----------------------------------------------------------------------------- line search

def _cubic_minimum(x1: float, f1: float, g1: float, x2: float, f2: float, g2: float,
                   lo: float | None = None, hi: float | None = None) -> float:
    """Minimizer of the cubic through (x1, f1, g1) and (x2, f2, g2), clamped to [lo, hi]."""
    lo, hi = (lo, hi) if lo is not None else (min(x1, x2), max(x1, x2))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    disc = d1 * d1 - g1 * g2
    if disc < 0:
        return (lo + hi) / 2.0
    d2 = disc ** 0.5 * (1 if x2 >= x1 else -1)
    x = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    return min(max(x, lo), hi)


def _strong_wolfe(evaluate, t: float, d: Tensor, loss: float, grad: Tensor, slope: float,
                  c1: float = 1e-4, c2: float = 0.9, tolerance_change: float = 1e-9,
                  max_ls: int = 25):
    """A step length satisfying the strong Wolfe conditions (Nocedal & Wright, alg. 3.5-3.6):
    bracket a minimum, then shrink the bracket by cubic interpolation ("zoom").

    Returns (loss, flat gradient, step, evaluations).
    """
    d_max = float(d.abs().max())
    f_new, g_new = evaluate(t)
    evals = 1
    slope_new = float(kiln.dot(g_new, d))
    t_prev, f_prev, g_prev, slope_prev = 0.0, loss, grad, slope
    bracket = None
    done = False
    # `trials` counts the evaluations after the first, as PyTorch's `ls_iter` does: its
    # "no lower than the previous trial" test starts at the third trial, and the budget
    # `max_ls` bounds those later evaluations (so up to max_ls + 1 in all)
    trials = 0
    while trials < max_ls:
        if f_new > loss + c1 * t * slope or (trials > 1 and f_new >= f_prev):
            bracket = [(t_prev, f_prev, g_prev, slope_prev), (t, f_new, g_new, slope_new)]
            break
        if abs(slope_new) <= -c2 * slope:
            bracket, done = [(t, f_new, g_new, slope_new)], True
            break
        if slope_new >= 0:
            bracket = [(t_prev, f_prev, g_prev, slope_prev), (t, f_new, g_new, slope_new)]
            break
        # extrapolate: a cubic step inside [t + 0.01 (t - t_prev), 10 t]
        lo, hi = t + 0.01 * (t - t_prev), t * 10
        t_next = _cubic_minimum(t_prev, f_prev, slope_prev, t, f_new, slope_new, lo, hi)
        t_prev, f_prev, g_prev, slope_prev = t, f_new, g_new.clone(), slope_new
        t = t_next
        f_new, g_new = evaluate(t)
        evals += 1
        trials += 1
        slope_new = float(kiln.dot(g_new, d))
    if bracket is None:
        bracket = [(0.0, loss, grad, slope), (t, f_new, g_new, slope_new)]
    # zoom: keep the bracket's low end at the lower loss, shrink until Wolfe holds
    insufficient = False
    while not done and trials < max_ls:
        (ta, fa, ga, sa), (tb, fb, gb, sb) = bracket
        if abs(tb - ta) * d_max < tolerance_change:
            break
        t = _cubic_minimum(ta, fa, sa, tb, fb, sb)
        lo, hi = min(ta, tb), max(ta, tb)
        # a point too near an end makes no progress: move it inward (PyTorch's safeguard)
        eps = 0.1 * (hi - lo)
        if min(hi - t, t - lo) < eps:
            if insufficient or t >= hi or t <= lo:
                t = hi - eps if abs(t - hi) < abs(t - lo) else lo + eps
                insufficient = False
            else:
                insufficient = True
        else:
            insufficient = False
        f_new, g_new = evaluate(t)
        evals += 1
        trials += 1
        slope_new = float(kiln.dot(g_new, d))
        low = 0 if fa <= fb else 1
        if f_new > loss + c1 * t * slope or f_new >= bracket[low][1]:
            bracket[1 - low] = (t, f_new, g_new, slope_new)
        else:
            if abs(slope_new) <= -c2 * slope:
                bracket[low] = (t, f_new, g_new, slope_new)
                done = True
                break
            if slope_new * (bracket[1 - low][0] - bracket[low][0]) >= 0:
                bracket[1 - low] = bracket[low]
            bracket[low] = (t, f_new, g_new, slope_new)
    best = min(bracket, key=lambda entry: entry[1])
    return best[1], best[2], best[0], evals
