"""kiln.utils.tensorboard.SummaryWriter against torch.utils.tensorboard.SummaryWriter: both
write the same calls into separate log directories, and TensorBoard's own reader
(EventAccumulator) must find the same scalars, histograms, image pixels, text and hparams."""

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from torch.utils.tensorboard import SummaryWriter as TorchWriter

import kiln
import kiln.nn as nn
from kiln.utils.tensorboard import SummaryWriter


def _both(tmp_path, write):
    """Run `write(writer, lib)` with torch's writer and kiln's; return the two log dirs."""
    dirs = []
    for name, writer_type, lib in [("torch", TorchWriter, torch), ("kiln", SummaryWriter, kiln)]:
        log_dir = str(tmp_path / name)
        with writer_type(log_dir) as w:
            write(w, lib)
        dirs.append(log_dir)
    return dirs


def _load(log_dir):
    acc = EventAccumulator(log_dir, size_guidance={"images": 0, "histograms": 0, "scalars": 0,
                                                   "tensors": 0})
    acc.Reload()
    return acc


def test_scalars_and_scalar_groups_read_back_as_torchs(tmp_path):
    def write(w, lib):
        for step in range(5):
            w.add_scalar("loss/train", lib.tensor(1.0 / (step + 1)), step)
            w.add_scalar("lr", 0.1 * 0.5 ** step, global_step=step)
            w.add_scalars("run_14h", {"xsinx": step * np.sin(step), "xcosx": step * 1.0}, step)
    t, k = _both(tmp_path, write)
    ta, ka = _load(t), _load(k)
    assert sorted(ka.Tags()["scalars"]) == sorted(ta.Tags()["scalars"]) == ["loss/train", "lr"]
    for tag in ["loss/train", "lr"]:
        assert [(e.step, e.value) for e in ka.Scalars(tag)] == \
            [(e.step, e.value) for e in ta.Scalars(tag)]
    runs = [sorted(d for d in os.listdir(x) if not d.startswith("events.")) for x in (t, k)]
    assert runs[1] == runs[0] == ["run_14h_xcosx", "run_14h_xsinx"]     # a run per key
    for sub in ["run_14h_xsinx", "run_14h_xcosx"]:
        ts, ks = _load(os.path.join(t, sub)), _load(os.path.join(k, sub))
        assert [(e.step, e.value) for e in ks.Scalars("run_14h")] == \
            [(e.step, e.value) for e in ts.Scalars("run_14h")]


@pytest.mark.parametrize("bins,max_bins", [("tensorflow", None), ("auto", None), (10, None),
                                           (40, 7), ("fd", None)])
def test_histograms_have_torchs_buckets(tmp_path, bins, max_bins):
    values = np.random.default_rng(0).standard_normal(500).astype(np.float32) * 3 + 1

    def write(w, lib):
        w.add_histogram("weights", lib.tensor(values), 0, bins=bins, max_bins=max_bins)
        w.add_histogram("weights", lib.tensor(values[:50] * 2), 1, bins=bins, max_bins=max_bins)
    t, k = _both(tmp_path, write)
    for th, kh in zip(_load(t).Histograms("weights"), _load(k).Histograms("weights")):
        assert kh.step == th.step
        a, b = kh.histogram_value, th.histogram_value
        for field in ["min", "max", "num", "sum", "sum_squares"]:
            assert getattr(a, field) == pytest.approx(getattr(b, field), rel=1e-12), field
        np.testing.assert_allclose(a.bucket_limit, b.bucket_limit, rtol=1e-12)
        assert list(a.bucket) == list(b.bucket)


def _pixels(event):
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))


def test_images_decode_to_torchs_pixels(tmp_path):
    rng = np.random.default_rng(1)
    chw = rng.random((3, 6, 5)).astype(np.float32)
    hwc = rng.integers(0, 256, (6, 5, 3)).astype(np.uint8)
    grey = rng.random((6, 5)).astype(np.float32)
    batch = rng.random((11, 1, 4, 3)).astype(np.float32)
    rgba = rng.random((4, 6, 5)).astype(np.float32)

    def write(w, lib):
        w.add_image("chw", lib.tensor(chw), 0)
        w.add_image("hwc", hwc, 0, dataformats="HWC")
        w.add_image("grey", lib.tensor(grey), 0, dataformats="HW")
        w.add_image("rgba", lib.tensor(rgba), 0)
        w.add_images("batch", lib.tensor(batch), 0)
    t, k = _both(tmp_path, write)
    ta, ka = _load(t), _load(k)
    for tag in ["chw", "hwc", "grey", "rgba", "batch"]:
        (te,), (ke,) = ta.Images(tag), ka.Images(tag)
        assert (ke.width, ke.height) == (te.width, te.height), tag
        np.testing.assert_array_equal(_pixels(ke), _pixels(te), err_msg=tag)


def test_text_and_hparams_read_back_as_torchs(tmp_path):
    def write(w, lib):
        w.add_text("notes", "lr *0.1*, batch 32", 3)
        w.add_hparams({"lr": 0.1, "bsize": 32, "optimizer": "adam", "nesterov": True},
                      {"hparam/accuracy": 0.75, "hparam/loss": lib.tensor(0.5)},
                      run_name="trial")
    t, k = _both(tmp_path, write)
    ta, ka = _load(t), _load(k)
    (tt,), (kt,) = ta.Tensors("notes/text_summary"), ka.Tensors("notes/text_summary")
    assert (kt.step, kt.tensor_proto.string_val) == (tt.step, tt.tensor_proto.string_val)
    ts, ks = _load(os.path.join(t, "trial")), _load(os.path.join(k, "trial"))
    for tag in ["hparam/accuracy", "hparam/loss"]:
        assert [e.value for e in ks.Scalars(tag)] == [e.value for e in ts.Scalars(tag)]
    content = {}
    for name, acc in [("torch", ts), ("kiln", ks)]:
        plugin = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
        start = hparams_metadata.parse_session_start_info_plugin_data(
            plugin[hparams_metadata.SESSION_START_INFO_TAG])
        experiment = hparams_metadata.parse_experiment_plugin_data(
            plugin[hparams_metadata.EXPERIMENT_TAG])
        content[name] = ({k: v for k, v in start.hparams.items()},
                         sorted((h.name, h.type) for h in experiment.hparam_infos),
                         sorted(m.name.tag for m in experiment.metric_infos))
    assert content["kiln"] == content["torch"]


def test_graph_of_a_model_names_its_inputs_and_ops(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with SummaryWriter(str(tmp_path)) as w:
        w.add_graph(model, kiln.randn(5, 4))
    graph = _load(str(tmp_path)).Graph()
    names = {n.name for n in graph.node}
    assert {"input/0.weight", "input/0.bias", "input/2.weight", "input/2.bias"} <= names
    assert any(n.op == "relu" for n in graph.node)
    for n in graph.node:
        assert set(n.input) <= names, n
    (out,) = [n for n in graph.node if n.name.startswith("output/")]
    assert [d.size for d in out.attr["_output_shapes"].list.shape[0].dim] == [5, 2]


def test_default_log_dir_purge_step_and_bad_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    w = SummaryWriter(comment="_trial")
    w.add_scalar("x", 1.0, 0)
    w.close()
    (run,) = os.listdir(tmp_path / "runs")
    assert run.endswith("_trial") and w.get_logdir() == os.path.join("runs", run)
    with SummaryWriter("purged", purge_step=3) as p:
        p.add_scalar("x", 2.0, 3)
    assert [e.step for e in _load("purged").Scalars("x")] == [3]
    with pytest.raises(ValueError, match="one value"):
        SummaryWriter("bad").add_scalar("x", kiln.ones(3), 0)
    with pytest.raises(ValueError, match="dataformats"):
        SummaryWriter("bad").add_image("x", kiln.ones(3, 4), 0)


def test_pr_curves_are_torchs(tmp_path):
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 200)
    predictions = rng.random(200).astype(np.float32)
    weights = rng.random(200)

    def write(w, lib):
        w.add_pr_curve("pr", lib.tensor(labels), lib.tensor(predictions), 0)
        w.add_pr_curve("pr", labels, predictions, 1, num_thresholds=11, weights=weights)
    t, k = _both(tmp_path, write)
    for te, ke in zip(_load(t).Tensors("pr"), _load(k).Tensors("pr")):
        assert ke.step == te.step
        assert [d.size for d in ke.tensor_proto.tensor_shape.dim] == \
            [d.size for d in te.tensor_proto.tensor_shape.dim]
        np.testing.assert_allclose(ke.tensor_proto.float_val, te.tensor_proto.float_val,
                                   rtol=1e-6)
    tm, km = [_load(d).SummaryMetadata("pr").plugin_data for d in (t, k)]
    assert (km.plugin_name, km.content) == (tm.plugin_name, tm.content)


def test_embeddings_write_torchs_projector_files(tmp_path):
    rng = np.random.default_rng(5)
    points = rng.standard_normal((7, 4)).astype(np.float32)
    images = rng.random((7, 1, 3, 3)).astype(np.float32)   # (torch fails on H != W)

    def write(w, lib):
        w.add_embedding(lib.tensor(points), metadata=list("abcdefg"),
                        label_img=lib.tensor(images), global_step=3, tag="features")
        w.add_embedding(points[:3], metadata=[[1, "x"], [2, "y"], [3, "z"]],
                        metadata_header=["n", "c"])
    t, k = _both(tmp_path, write)
    for name in ["projector_config.pbtxt", "00003/features/tensors.tsv",
                 "00003/features/metadata.tsv", "00000/default/tensors.tsv",
                 "00000/default/metadata.tsv"]:
        with open(os.path.join(t, name)) as a, open(os.path.join(k, name)) as b:
            assert b.read() == a.read(), name
    sprites = [np.asarray(Image.open(os.path.join(d, "00003/features/sprite.png")))
               for d in (t, k)]
    np.testing.assert_array_equal(sprites[1], sprites[0])
