"""The quantization tutorials' steps as an unmodified PyTorch script: run by PyTorch and by
`python -m kiln run` (every `torch.*` import resolves to kiln), each saving its results; kiln's
equal torch's (dynamic Linear exactly; static quantization within one output quantization step,
as kiln calibrates with its own float passes)."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

NUMBER = re.compile(r"\d+\.\d+(?:e-?\d+)?")

SCRIPT = '''
import sys
import numpy as np
import torch
import torch.nn as nn
from torch.ao.quantization import QuantStub, DeQuantStub, fuse_modules, prepare, convert
import torch.ao.quantization as tq

torch.manual_seed(0)
torch.backends.quantized.engine = "x86"


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 6 * 6, 10)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.relu(self.bn(self.conv(self.quant(x))))
        x = torch.flatten(x, 1)
        return self.dequant(self.fc(x))


model = Net().eval()
model = fuse_modules(model, [["conv", "bn", "relu"]])
model.qconfig = tq.get_default_qconfig("x86")
prepared = prepare(model)
for _ in range(4):
    prepared(torch.randn(8, 1, 8, 8))
quantized = convert(prepared)
x = torch.randn(5, 1, 8, 8)
static_out = quantized(x)
print(quantized)

float_model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5)).eval()
dynamic = torch.quantization.quantize_dynamic(float_model, {nn.Linear}, dtype=torch.qint8)
dynamic_out = dynamic(torch.randn(4, 20))
np.savez(sys.argv[1], static=static_out.numpy(), step=np.float32(quantized.fc.scale),
         dynamic=dynamic_out.detach().numpy(), text=str(quantized))
'''


def _run(tmp_path: Path, runner: list) -> dict:
    script = tmp_path / "quantization_tutorial.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"{runner[-1]}.npz"
    done = subprocess.run([sys.executable, *runner, str(script), str(out)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path,
                          env={"PYTHONPATH": str(Path(__file__).resolve().parents[2]),
                               "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(out))


def test_tutorial_script_under_kiln_run_matches_torch(tmp_path):
    ref = _run(tmp_path, ["-W", "ignore"])
    ours = _run(tmp_path, ["-W", "ignore", "-m", "kiln", "run"])
    np.testing.assert_array_equal(ours["dynamic"], ref["dynamic"])
    assert np.abs(ours["static"] - ref["static"]).max() <= ref["step"] * 1.0001
    # the printed modules alike; their scales to float32 rounding (kiln calibrates on its own
    # float passes, whose convolution sums in another order than torch's on some CPUs)
    ours_text, ref_text = str(ours["text"]).replace("kiln.", "torch."), str(ref["text"])
    assert NUMBER.sub("#", ours_text) == NUMBER.sub("#", ref_text)
    np.testing.assert_allclose([float(x) for x in NUMBER.findall(ours_text)],
                               [float(x) for x in NUMBER.findall(ref_text)], rtol=1e-6)
