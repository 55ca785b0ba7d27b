"""kiln.onnx.export: the ONNX file passes onnx's checker and, run by onnxruntime, matches kiln's
eager result at every batch size the dynamic axis allows; unsupported ops name the line."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest

import kiln
import kiln.export
import kiln.nn as nn
import kiln.onnx
from tests.export.models import MODELS, build, eager

onnx = pytest.importorskip("onnx", reason="kiln.onnx tests need onnx (pip install kiln[onnx])")
ort = pytest.importorskip("onnxruntime", reason="kiln.onnx tests need onnxruntime")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _session(source):
    data = source if isinstance(source, bytes) else open(source, "rb").read()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


COMPOSITES = {"digits_cnn": {"Conv", "BatchNormalization", "MaxPool", "Gemm", "Relu"},
              "mlp": {"Gemm", "Relu"}, "char_lstm": {"Gemm", "Sigmoid", "Tanh", "Gather"},
              "transformer": {"LayerNormalization", "Softmax", "MatMul", "Relu"},
              "convnet": {"Conv", "BatchNormalization", "MaxPool", "Gemm"}}


@pytest.mark.parametrize("composites", [True, False], ids=["composites", "primitives"])
@pytest.mark.parametrize("name", MODELS)
def test_onnxruntime_matches_eager_with_dynamic_batch(name, composites, tmp_path):
    model, make = build(name)
    path = tmp_path / f"{name}.onnx"
    kiln.onnx.export(model, (make(3),), path, input_names=["x"], output_names=["y"],
                     dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17,
                     composites=composites)
    proto = onnx.load(path)
    ops = {n.op_type for n in proto.graph.node}
    if composites:
        assert COMPOSITES[name] <= ops, ops
        if name == "digits_cnn":          # no im2col slices left behind the Convs
            assert not ops & {"Slice", "MatMul", "Cast"}, ops
    else:
        assert not ops & {"Conv", "Gemm", "BatchNormalization", "MaxPool", "Softmax",
                          "LayerNormalization"}
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = _session(str(path))
    for b in (1, 7):
        x = make(b, seed=b)
        (got,) = session.run(None, {"x": x.numpy()})
        want = eager(model, x)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=f"{name} batch {b}")


def test_static_export_of_an_exported_program_to_a_file_object():
    model, make = build("mlp")
    ep = kiln.export.export(model, (make(4),))
    buffer = io.BytesIO()
    kiln.onnx.export(ep, (make(4),), buffer)
    session = _session(buffer.getvalue())
    (inp,) = session.get_inputs()
    assert inp.name == "input" and inp.shape == [4, 30]      # Sequential.forward(input)
    x = make(4, seed=5)
    (got,) = session.run(None, {"input": x.numpy()})
    np.testing.assert_allclose(got, eager(model, x), rtol=0, atol=1e-5)


def test_unsupported_op_names_the_op_and_line(tmp_path):
    def scatter(x, idx):
        return x.index_add(0, idx, kiln.ones(2, 3))
    line = scatter.__code__.co_firstlineno + 1
    with pytest.raises(kiln.onnx.UnsupportedOperatorError,
                       match=rf"op 'index_add' .*test_onnx.py:{line}.*no ONNX mapping"):
        kiln.onnx.export(scatter, (kiln.zeros(4, 3), kiln.tensor([0, 2])), tmp_path / "s.onnx")


def test_softmax_log_softmax_layer_norm_recovered(tmp_path):
    weight, bias = kiln.randn(5), kiln.randn(5)

    def fn(x):
        return (kiln.softmax(x, -1) + kiln.log_softmax(x, 1) +
                kiln.nn.functional.layer_norm(x, (5,), weight, bias, eps=1e-3))
    x = kiln.randn(3, 5)
    proto = kiln.onnx.export(fn, (x,), tmp_path / "n.onnx")
    ops = [n.op_type for n in proto.graph.node]
    assert {"Softmax", "LogSoftmax", "LayerNormalization"} <= set(ops)
    assert not {"Exp", "ReduceMax", "Sqrt"} & set(ops)
    ln = next(n for n in proto.graph.node if n.op_type == "LayerNormalization")
    assert onnx.helper.get_attribute_value(ln.attribute[-1]) == pytest.approx(1e-3)
    (got,) = _session(str(tmp_path / "n.onnx")).run(None, {"x": x.numpy()})
    np.testing.assert_allclose(got, fn(x).numpy(), rtol=0, atol=1e-5)


def test_strided_pool_and_conv_recovered(tmp_path):
    conv = nn.Conv2d(2, 3, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    pool = nn.MaxPool2d(kernel_size=3, stride=2)

    def fn(x):
        return pool(conv(x))
    x = kiln.randn(2, 2, 11, 12)
    proto = kiln.onnx.export(fn, (x,), tmp_path / "p.onnx")
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Conv") == 1 and ops.count("MaxPool") == 1, ops
    (got,) = _session(str(tmp_path / "p.onnx")).run(None, {"x": x.numpy()})
    with kiln.no_grad():
        np.testing.assert_allclose(got, fn(x).numpy(), rtol=0, atol=1e-5)


def test_integer_and_boolean_ops(tmp_path):
    def fn(x, k):
        mask = (x > 0) & ~(x > 2)
        return kiln.where(mask, x, -x).cumsum(1), (k % 3) * 2, x.argmax(1), x.flip(1).round()
    x = kiln.randn(3, 5) * 3
    k = kiln.tensor([[-7, 5, 3]])
    path = tmp_path / "f.onnx"
    kiln.onnx.export(fn, (x, k), path, input_names=["x", "k"])
    got = _session(str(path)).run(None, {"x": x.numpy(), "k": k.numpy()})
    for g, w in zip(got, fn(x, k)):
        np.testing.assert_allclose(g, w.numpy(), rtol=0, atol=1e-5)


def test_import_kiln_onnx_without_the_onnx_package():
    script = ("import sys; sys.modules['onnx'] = None\n"
              "import kiln, kiln.onnx\n"
              "try:\n"
              "    kiln.onnx.export(lambda x: x + 1, (kiln.ones(2),), 'never.onnx')\n"
              "except ImportError as e:\n"
              "    print('refused:', e)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert done.returncode == 0, done.stderr
    assert "refused: kiln.onnx.export needs the onnx package" in done.stdout


def test_opset_too_old_is_refused(tmp_path):
    with pytest.raises(ValueError, match="opset_version 13"):
        kiln.onnx.export(nn.Linear(2, 2), (kiln.ones(1, 2),), tmp_path / "x.onnx",
                         opset_version=13)
