"""PyTorch computes NaN and inf without a warning; so does kiln, eagerly, in gradients and in
compiled replays, while a user's own NumPy code still warns."""

import warnings

import numpy as np
import pytest
import torch

import kiln

INF = float("inf")

CALLS = {
    "mul": lambda t, x, z: x * z, "sub": lambda t, x, z: x - x, "add": lambda t, x, z: x + -x,
    "div": lambda t, x, z: x / z, "matmul": lambda t, x, z: x @ z, "sum": lambda t, x, z: x.sum(),
    "mean": lambda t, x, z: x.mean(), "var": lambda t, x, z: x.var(),
    "prod": lambda t, x, z: x.prod(), "cumsum": lambda t, x, z: x.cumsum(0),
    "cumprod": lambda t, x, z: x.cumprod(0), "rows": lambda t, x, z: x.view(2, 2).sum(1),
    "where": lambda t, x, z: t.where(x > 0, x, x * 0),
    "layer_norm": lambda t, x, z: t.nn.functional.layer_norm(x, (4,)),
    "std": lambda t, x, z: x.std(), "log_softmax": lambda t, x, z: t.log_softmax(x, 0),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_nan_making_ops_are_silent_and_equal_torchs(name):
    def inputs(t):
        return t.tensor([INF, -INF, 0.0, 1.0]), t.tensor([0.0, INF, 0.0, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # torch's call must not warn either
        want = CALLS[name](torch, *inputs(torch))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"kiln\.")
        got = CALLS[name](kiln, *inputs(kiln))
    assert [str(w.message) for w in seen] == []
    np.testing.assert_array_equal(got.numpy(), want.numpy())


SCRIPT = r"""
import numpy as np, kiln
inf = float("inf")
x = kiln.tensor([inf, 1.0], requires_grad=True)
(x * x).sum().backward()                    # inf * inf, then inf - ... in the gradient's sums
y = kiln.tensor([inf, -inf])
print((y + y.flip(0)).tolist(), (y * 0).sum().item(), y.prod().item())
f = kiln.compile(lambda a: (a * 0).sum() + (a - a).prod())
for _ in range(3):
    out = f(kiln.tensor([inf, 2.0]))
print(out.item())
np.array([0.0]) / 0                         # the user's own NumPy still warns
"""


def test_a_script_sees_no_numpy_warnings_from_kiln_but_its_own(tmp_path):
    """Run as a script: pytest drops filters installed while it collects (kiln's import), so
    the filter's installation is checked in a fresh interpreter."""
    import subprocess
    import sys
    path = tmp_path / "script.py"
    path.write_text(SCRIPT)
    run = subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["[nan,", "nan]", "nan", "-inf", "nan"]
    warned = [line for line in run.stderr.splitlines() if "Warning" in line]
    assert len(warned) == 1 and "encountered in divide" in warned[0] and "script.py" in warned[0]
