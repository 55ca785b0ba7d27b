"""The C route: an exported program built into a shared library, linked into a small C program
and run in a subprocess with no Python, matches kiln's eager result."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import kiln
import kiln.export
from kiln.export.c_library import CLibraryError, build_c_library, cblas_available
from tests.export.models import build, eager

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC") or "cc") is None,
                                reason="the C route needs a C compiler (cc)")


def _driver(lib) -> str:
    """The C driver (tests/export/c_driver.c) linked against the built library."""
    exe = lib.directory / "driver"
    cc = os.environ.get("CC") or "cc"
    done = subprocess.run([cc, "-O1", os.path.join(HERE, "c_driver.c"), f"-I{lib.directory}",
                           f"-L{lib.directory}", "-lkiln_model",
                           f"-Wl,-rpath,{lib.directory}", "-o", str(exe)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return str(exe)


def _run(exe, lib, x: np.ndarray, shape, weights=None):
    d = lib.directory
    x.tofile(d / "in0.bin")
    done = subprocess.run([exe, str(weights or lib.weights), str(d / "in0.bin"),
                           str(d / "out0.bin")], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        return done
    return np.fromfile(d / "out0.bin", dtype=np.float32).reshape(shape)


@pytest.mark.parametrize("name", ["mlp", "digits_cnn", "char_lstm", "transformer", "convnet"])
def test_c_library_matches_eager(name, tmp_path):
    model, make = build(name)
    ep = kiln.export.export(model, (make(3),), dynamic_shapes=({0: "batch"},))
    lib = build_c_library(ep, tmp_path / name, sizes={"batch": 7}, blas=False)   # C loops
    header = lib.header.read_text()
    for fn in ("kiln_model_load", "kiln_model_run", "kiln_model_free"):
        assert fn in header
    assert "Python.h" not in lib.source.read_text()
    x = make(7, seed=3)
    want = eager(model, x)
    got = _run(_driver(lib), lib, x.numpy(), want.shape)
    assert isinstance(got, np.ndarray), got.stderr
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    (in_process,) = lib.open()(x.numpy())            # the same library through ctypes
    np.testing.assert_allclose(in_process, got, rtol=0, atol=1e-6)


@pytest.mark.skipif(not cblas_available(), reason="cblas.h / OpenBLAS not found "
                    "(apt-get install libopenblas-dev); the loop fallback is tested above")
def test_c_library_with_cblas(tmp_path):
    model, make = build("digits_cnn")
    ep = kiln.export.export(model, (make(5),))
    lib = build_c_library(ep, tmp_path, blas=True)
    assert lib.blas and "cblas_sgemm" in lib.source.read_text()
    x = make(5, seed=4)
    want = eager(model, x)
    np.testing.assert_allclose(_run(_driver(lib), lib, x.numpy(), want.shape), want, rtol=0,
                               atol=1e-5)


def test_cli_builds_from_a_saved_program_and_bad_weights_are_refused(tmp_path):
    model, make = build("mlp")
    ep = kiln.export.export(model, (make(4),))
    ep.save(tmp_path / "mlp.kiln")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "kiln", "export", "--target", "c",
                           str(tmp_path / "mlp.kiln"), str(out)], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "libkiln_model.so" in done.stdout
    from kiln.export.c_library import CLibrary
    lib = CLibrary(out, out / "kiln_model.c", out / "kiln_model.h", out / "kiln_model.weights",
                   out / "libkiln_model.so", [], [], False)
    exe = _driver(lib)
    x = make(4, seed=9)
    np.testing.assert_allclose(_run(exe, lib, x.numpy(), (4, 2)), eager(model, x), rtol=0,
                               atol=1e-5)
    data = (out / "kiln_model.weights").read_bytes()
    (tmp_path / "short.weights").write_bytes(data[:-8])
    failed = _run(exe, lib, x.numpy(), (4, 2), weights=tmp_path / "short.weights")
    assert failed.returncode == 3 and "truncated" in failed.stderr
    (tmp_path / "other.weights").write_bytes(b"PK\x03\x04" + data[4:])
    failed = _run(exe, lib, x.numpy(), (4, 2), weights=tmp_path / "other.weights")
    assert failed.returncode == 3 and "not a weights file" in failed.stderr


def test_cli_names_a_missing_or_foreign_file(tmp_path, capsys):
    from kiln.cli import main
    assert main(["export", "--target", "c", str(tmp_path / "none.kiln"), str(tmp_path)]) == 1
    (tmp_path / "junk.kiln").write_bytes(b"\x80\x04junk")
    assert main(["export", "--target", "onnx", str(tmp_path / "junk.kiln"), "x.onnx"]) == 1
    err = capsys.readouterr().err
    assert "none.kiln" in err and "pickle" in err


def test_op_without_c_implementation_is_named(tmp_path):
    def running(x):
        return x.cumsum(1) * 2
    line = running.__code__.co_firstlineno + 1
    ep = kiln.export.export(running, (kiln.randn(2, 3),))
    with pytest.raises(CLibraryError, match=rf"op 'cumsum' .*test_c_library.py:{line}"):
        build_c_library(ep, tmp_path, build=False)


def test_a_bad_index_is_reported_in_eager_words(tmp_path):
    emb = kiln.nn.Embedding(5, 3)

    def lookup(i, x):
        return emb(i) * x + x.take(i % 4)[:, None]
    line = lookup.__code__.co_firstlineno + 1
    ep = kiln.export.export(lookup, (kiln.tensor([0, 1]), kiln.randn(2, 3)))
    run = build_c_library(ep, tmp_path, blas=False).open()
    x = np.ones((2, 3), np.float32)
    (good,) = run(np.array([1, 4]), x)
    with kiln.no_grad():
        want = lookup(kiln.tensor([1, 4]), kiln.tensor(x)).numpy()
    np.testing.assert_allclose(good, want, rtol=0, atol=1e-6)
    with pytest.raises(IndexError) as eager_error:
        lookup(kiln.tensor([1, 7]), kiln.tensor(x))
    words = str(eager_error.value).split(" (at ")[0]
    assert words == ("embedding: index out of range in self: index 7 is out of bounds for "
                     "dimension 0 with size 5")
    with pytest.raises(RuntimeError) as c_error:
        run(np.array([1, 7]), x)
    assert f"{words} (at test_c_library.py:{line})" in str(c_error.value)
    with pytest.raises(RuntimeError, match="index -9 is out of bounds for dimension 0 with "
                                           "size 5"):
        run(np.array([-9, 0]), x)


def test_a_value_check_is_reported_in_eager_words(tmp_path):
    def nll(x, target, var):
        return kiln.nn.functional.gaussian_nll_loss(x, target, var)
    line = nll.__code__.co_firstlineno + 1
    x, target = np.ones((2, 3), np.float32), np.zeros((2, 3), np.float32)
    var = np.full((2, 3), 0.5, np.float32)
    ep = kiln.export.export(nll, (kiln.tensor(x), kiln.tensor(target), kiln.tensor(var)))
    run = build_c_library(ep, tmp_path, blas=False).open()
    (good,) = run(x, target, var)
    with kiln.no_grad():
        want = nll(kiln.tensor(x), kiln.tensor(target), kiln.tensor(var)).numpy()
    np.testing.assert_allclose(good, want, rtol=1e-6)
    var[1, 2] = -0.25
    with pytest.raises(ValueError) as eager_error:
        nll(kiln.tensor(x), kiln.tensor(target), kiln.tensor(var))
    words = str(eager_error.value).split(" (at ")[0]
    with pytest.raises(RuntimeError) as c_error:
        run(x, target, var)
    assert f"{words} (at test_c_library.py:{line})" in str(c_error.value)


def test_a_value_check_shows_the_offending_value(tmp_path):
    def bce(p, y):
        return kiln.nn.functional.binary_cross_entropy(p, y)
    p, y = np.array([0.25, 0.5, 0.75], np.float32), np.array([0.0, 1.0, 1.0], np.float32)
    ep = kiln.export.export(bce, (kiln.tensor(p), kiln.tensor(y)))
    run = build_c_library(ep, tmp_path, blas=False).open()
    with kiln.no_grad():
        np.testing.assert_allclose(run(p, y)[0], bce(kiln.tensor(p), kiln.tensor(y)).numpy(),
                                   rtol=1e-6)
    p[1] = 1.25
    with pytest.raises(RuntimeError, match="input should be between 0 and 1"):
        bce(kiln.tensor(p), kiln.tensor(y))
    with pytest.raises(RuntimeError, match=r"binary_cross_entropy: all elements of input should "
                                           r"be between 0 and 1; got 1\.25 \(shape \[3\]\)"):
        run(p, y)
