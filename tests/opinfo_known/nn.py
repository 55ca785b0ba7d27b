"""Known departures from PyTorch's OpInfo samples: torch.nn.functional,
torch.special, torch.signal and ATen-named ops.

Each entry is (op, mode): what `tests/opinfo_sweep.py` found. `tests/test_opinfo.py` fails when
an op not listed here departs from torch, and when a listed one no longer does (then delete
its line). Modes: float32 and int64 values, float64 values and gradients.

`COMPARE` maps an op whose correct result is not unique (signs of singular vectors, indices of
ties), or whose torch result is less exact than the comparison's tolerance, to `fn(kiln_out, torch_out, torch_args, compare) -> None or why`, used instead of the
element-wise comparison; `compare(k, t, what)` is that comparison."""

import mpmath          # sympy's, so torch's, dependency
import numpy as np


def _exact(name: str, fn):
    """Compare with the function's 40-digit value (mpmath) instead of torch's: torch 2.13's CPU
    kernels of bessel_j0 and bessel_y1 are off by up to ~1e-6 relative between 5 and 25 (more
    near their zeros), where kiln's (Cephes, through SciPy) is within ~1e-14."""
    def check(k, t, args, compare):
        import torch
        x = args[0].detach().to(torch.float64).numpy().reshape(-1)
        exact = t.detach().to(torch.float64).numpy().reshape(-1)   # torch's at 0, inf, NaN
        with mpmath.workdps(40):
            for i in np.flatnonzero(np.isfinite(x) & (x != 0)):
                value = fn(mpmath.mpf(float(x[i])))
                exact[i] = float(value) if mpmath.im(value) == 0 else np.nan
        exact = torch.from_numpy(exact.reshape(t.shape)).to(t.dtype)
        return compare(k, exact, f"output (vs {name}'s exact value)")
    return check


COMPARE = {
    'special.bessel_j0': _exact('bessel_j0', lambda x: mpmath.besselj(0, x)),
    'special.bessel_y1': _exact('bessel_y1', lambda x: mpmath.bessely(1, x)),
}

KNOWN = {
    ('_batch_norm_with_update', 'float32'): 'missing',
    ('_batch_norm_with_update', 'float64_grad'): 'missing',
    ('_native_batch_norm_legit', 'float32'): 'missing',
    ('_native_batch_norm_legit', 'float64_grad'): 'missing',
    ('_softmax_backward_data', 'float32'): 'missing',
    ('_softmax_backward_data', 'float64_grad'): 'missing',
    ('_upsample_bilinear2d_aa', 'float32'): 'missing',
    ('_upsample_bilinear2d_aa', 'float64_grad'): 'missing',
    ('constant_pad_nd', 'float32'): 'missing',
    ('constant_pad_nd', 'int64'): 'missing',
    ('constant_pad_nd', 'float64_grad'): 'missing',
    ('grid_sampler_2d', 'float32'): 'missing',
    ('grid_sampler_2d', 'float64_grad'): 'missing',
    ('grid_sampler_3d', 'float32'): 'missing',
    ('grid_sampler_3d', 'float64_grad'): 'missing',
    ('max_pool2d_with_indices_backward', 'float32'): "error: AttributeError: '_OpNamespace' 'aten",
    ('max_pool2d_with_indices_backward', 'float64_grad'): "error: AttributeError: '_OpNamespace' ",
    ('native_batch_norm', 'float32'): 'missing',
    ('native_batch_norm', 'float64_grad'): 'missing',
    ('native_dropout_backward', 'float32'): 'missing',
    ('native_dropout_backward', 'int64'): 'missing',
    ('native_dropout_backward', 'float64_grad'): 'missing',
    ('native_group_norm', 'float32'): 'missing',
    ('native_group_norm', 'float64_grad'): 'missing',
    ('native_layer_norm', 'float32'): 'missing',
    ('native_layer_norm', 'float64_grad'): 'missing',
    ('nn.functional.alpha_dropout', 'float32'): 'wrong: output: 12 of 25 differ, e.g. at (np.int6',
    ('nn.functional.alpha_dropout', 'float64_grad'): 'wrong: output: 12 of 25 differ, e.g. at (np',
    ('nn.functional.avg_pool3d', 'int64'): 'wrong: output: 3 of 24 differ, e.g. at (np.int64(0), ',
    ('nn.functional.batch_norm', 'float32'): 'error: ValueError: batch_norm: expected an input wi',
    ('nn.functional.batch_norm', 'float64_grad'): 'error: ValueError: batch_norm: expected an inp',
    ('nn.functional.cosine_similarity', 'float32'): 'wrong: output: 6 of 6 differ, e.g. at (np.in',
    ('nn.functional.cosine_similarity', 'float64_grad'): 'wrong: output: 6 of 6 differ, e.g. at (',
    ('nn.functional.ctc_loss', 'float64_grad'): 'wrong: grad 0: 15237 of 16000 differ, e.g. at (n',
    ('nn.functional.dropout', 'float32'): 'wrong: output: 12 of 25 differ, e.g. at (np.int64(0), ',
    ('nn.functional.dropout', 'float64_grad'): 'wrong: output: 12 of 25 differ, e.g. at (np.int64',
    ('nn.functional.dropout2d', 'float32'): 'wrong: output: 60 of 125 differ, e.g. at (np.int64(0',
    ('nn.functional.dropout2d', 'float64_grad'): 'wrong: output: 60 of 125 differ, e.g. at (np.in',
    ('nn.functional.dropout3d', 'float32'): 'wrong: output: 375 of 625 differ, e.g. at (np.int64(',
    ('nn.functional.dropout3d', 'float64_grad'): 'wrong: output: 375 of 625 differ, e.g. at (np.i',
    ('nn.functional.embedding_bag', 'float32'): 'error: NotImplementedError: embedding_bag: scale',
    ('nn.functional.feature_alpha_dropout.with_train', 'float32'): 'wrong: output: 300 of 625 dif',
    ('nn.functional.feature_alpha_dropout.with_train', 'float64_grad'): 'wrong: output: 300 of 62',
    ('nn.functional.fractional_max_pool2d', 'float32'): 'wrong: output: 1 of 18 differ, e.g. at (',
    ('nn.functional.fractional_max_pool2d', 'float64_grad'): 'wrong: output: 1 of 18 differ, e.g.',
    ('nn.functional.fractional_max_pool3d', 'float32'): 'wrong: output: 7 of 72 differ, e.g. at (',
    ('nn.functional.fractional_max_pool3d', 'float64_grad'): 'wrong: output: 9 of 72 differ, e.g.',
    ('nn.functional.grid_sample', 'float32'): "error: NotImplementedError: grid_sample: mode 'bic",
    ('nn.functional.grid_sample', 'float64_grad'): 'error: NotImplementedError: grid_sample: mode',
    ('nn.functional.group_norm', 'float32'): "error: RuntimeError: reshape: shape '[0, 1, -1]' is",
    ('nn.functional.group_norm', 'float64_grad'): "error: RuntimeError: reshape: shape '[0, 1, -1",
    ('nn.functional.local_response_norm', 'int64'): 'wrong: output: dtype float32, torch int64',
    ('nn.functional.multi_head_attention_forward', 'float32'): 'error: NotImplementedError: multi',
    ('nn.functional.multi_head_attention_forward', 'float64_grad'): 'error: NotImplementedError: ',
    ('nn.functional.multi_margin_loss', 'float32'): 'error: IndexError: dim: Dimension out of ran',
    ('nn.functional.multi_margin_loss', 'float64_grad'): 'error: IndexError: dim: Dimension out o',
    ('nn.functional.multilabel_margin_loss', 'float32'): 'wrong: output: 1 of 1 differ, e.g. at (',
    ('nn.functional.multilabel_margin_loss', 'float64_grad'): 'wrong: output: 1 of 1 differ, e.g.',
    ('nn.functional.pad.replicate_negative', 'float32'): 'error: IndexError: narrow: start (-1) +',
    ('nn.functional.pad.replicate_negative', 'int64'): 'error: IndexError: narrow: start (-1) + l',
    ('nn.functional.pad.replicate_negative', 'float64_grad'): 'error: IndexError: narrow: start (',
    ('nn.functional.pdist', 'float32'): 'error: ZeroDivisionError: float division by zero',
    ('nn.functional.pdist', 'float64_grad'): 'error: grad: RuntimeError: backward: element 0 of t',
    ('nn.functional.prelu', 'float32'): 'wrong: output: shape (1,), torch ()',
    ('nn.functional.prelu', 'float64_grad'): 'wrong: output: shape (1,), torch ()',
    ('nn.functional.rrelu', 'float32'): 'wrong: output: 11 of 20 differ, e.g. at (np.int64(0),) k',
    ('nn.functional.rrelu', 'float64_grad'): 'wrong: output: 14 of 20 differ, e.g. at (np.int64(0',
    ('nn.functional.scaled_dot_product_attention', 'float32'): 'wrong: output: 64 of 96 differ, e',
    ('nn.functional.scaled_dot_product_attention', 'float64_grad'): 'wrong: output: 64 of 96 diff',
    ('nn.functional.tanhshrink', 'int64'): 'error: TypeError: tanh: expected a floating-point inp',
    ('nn.functional.triplet_margin_with_distance_loss', 'float32'): 'error: RecursionError: maxim',
    ('nn.functional.triplet_margin_with_distance_loss', 'int64'): 'error: RecursionError: maximum',
    ('nn.functional.triplet_margin_with_distance_loss', 'float64_grad'): 'error: RecursionError: ',
    ('special.bessel_j0', 'float64_grad'): 'wrong: output: 3 of 20 differ, e.g. at (np.int64(6),)',
    ('special.bessel_y1', 'float64_grad'): 'wrong: output: 1 of 20 differ, e.g. at (np.int64(10),',
    ('torch.ops.aten._safe_softmax.default', 'float32'): 'missing',
    ('torch.ops.aten._safe_softmax.default', 'int64'): 'missing',
    ('torch.ops.aten._safe_softmax.default', 'float64_grad'): 'missing',
}
