"""`SummaryWriter`: training logs for TensorBoard, as `torch.utils.tensorboard` writes them.

kiln writes no file format of its own here: the event files, their protocol buffers and the
plugins' metadata all come from the `tensorboard` package (`pip install tensorboard`), which
must be installed, as with PyTorch. kiln turns its tensors into NumPy arrays and builds the
summaries: scalars, histograms (PyTorch's default bucket scheme), images (PNG), text, hparams
sessions and the graph of a model's traced forward.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
import zlib
from datetime import datetime

import numpy as np

try:
    from tensorboard.compat.proto import event_pb2, graph_pb2, summary_pb2, tensor_pb2
    from tensorboard.compat.proto.attr_value_pb2 import AttrValue
    from tensorboard.compat.proto.node_def_pb2 import NodeDef
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
    from tensorboard.plugins.hparams import metadata as hparams_metadata
    from tensorboard.plugins.pr_curve import metadata as pr_curve_metadata
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig
    from tensorboard.plugins.text import metadata as text_metadata
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from google.protobuf import text_format
except ImportError as e:        # as torch.utils.tensorboard without the package
    raise ImportError("kiln.utils.tensorboard needs the tensorboard package: pip install "
                      "tensorboard") from e

import kiln

__all__ = ["SummaryWriter"]


def _array(value) -> np.ndarray:
    """A NumPy array of a tensor (detached, on the host), an array or a Python number."""
    if isinstance(value, kiln.Tensor):
        return np.asarray(value.detach().cpu().numpy())
    return np.asarray(value)


def _tensorflow_bins() -> list:
    """TensorFlow's histogram buckets, PyTorch's default: +-1e-12 * 1.1**k up to 1e20, and 0."""
    positive, v = [], 1e-12
    while v < 1e20:
        positive.append(v)
        v *= 1.1
    return [-b for b in reversed(positive)] + [0.0] + positive


def _histogram(values: np.ndarray, bins, max_bins: int | None) -> summary_pb2.HistogramProto:
    values = values.reshape(-1).astype(np.float64)
    if values.size == 0:
        raise ValueError("add_histogram: the input has no element")
    counts, limits = np.histogram(values, bins=bins)
    if max_bins is not None and len(counts) > max_bins:
        # merge runs of `step` neighbouring buckets (the last run padded with empty ones)
        step = len(counts) // max_bins
        counts = np.pad(counts, (0, -len(counts) % step)).reshape(-1, step).sum(1)
        limits = np.append(limits[:-1:step][:len(counts)], limits[-1])
    # keep the buckets from the one before the first nonzero count to the last nonzero one:
    # TensorBoard reads only right edges, so the empty bucket gives the leftmost edge
    nonzero = np.flatnonzero(counts)
    first, last = (nonzero[0], nonzero[-1]) if nonzero.size else (0, len(counts) - 1)
    if first > 0:
        counts, limits = counts[first - 1:last + 1], limits[first:last + 2]
    else:
        counts, limits = np.concatenate([[0], counts[:last + 1]]), limits[:last + 2]
    return summary_pb2.HistogramProto(
        min=values.min(), max=values.max(), num=values.size, sum=values.sum(),
        sum_squares=values.dot(values), bucket_limit=limits.tolist(), bucket=counts.tolist())


def _png(image: np.ndarray) -> bytes:
    """An 8-bit (H, W, C) image, C in 1, 3 or 4, as PNG bytes (filter 0 on every row)."""
    height, width, channels = image.shape
    colour = {1: 0, 3: 2, 4: 6}[channels]        # grey, RGB, RGBA

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    rows = np.concatenate([np.zeros((height, 1), np.uint8),
                           image.reshape(height, width * channels)], axis=1)
    return (b"\x89PNG\r\n\x1a\n" +
            chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def _to_hwc(image: np.ndarray, dataformats: str) -> np.ndarray:
    """`image` in `dataformats` (CHW, HWC, HW, ...) as (H, W, C) with C 3 or 4 (grey images
    repeated into RGB, as PyTorch shows them)."""
    dataformats = dataformats.upper()
    if len(dataformats) != image.ndim or len(set(dataformats)) != len(dataformats):
        raise ValueError(f"add_image: dataformats {dataformats!r} does not describe an image "
                         f"of shape {list(image.shape)}")
    if "C" not in dataformats:
        image, dataformats = image[..., None], dataformats + "C"
    image = image.transpose([dataformats.index(d) for d in "HWC"])
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if image.shape[2] not in (3, 4):
        raise ValueError(f"add_image: an image has 1, 3 or 4 channels, got {image.shape[2]}")
    return image


def _uint8(image: np.ndarray) -> np.ndarray:
    """Pixels as PyTorch scales them: uint8 as is, anything else read as [0, 1] and times 255,
    clipped to [0, 255] and truncated."""
    scale = 1.0 if image.dtype == np.uint8 else 255.0
    return (image.astype(np.float32) * scale).clip(0, 255).astype(np.uint8)


def _image_summary(tag: str, image: np.ndarray) -> summary_pb2.Summary:
    height, width, channels = image.shape
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=(
        summary_pb2.Summary.Image(height=height, width=width, colorspace=channels,
                                  encoded_image_string=_png(image))))])


def _grid(images: np.ndarray, cols: int = 8) -> np.ndarray:
    """(N, H, W, C) images tiled into one, up to `cols` per row, as add_images shows them."""
    n, h, w, c = images.shape
    cols = min(n, cols)
    rows = -(-n // cols)
    grid = np.zeros((rows * h, cols * w, c), images.dtype)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = images[i]
    return grid


def _pr_curve(labels: np.ndarray, predictions: np.ndarray, num_thresholds: int,
              weights) -> np.ndarray:
    """(6, num_thresholds): true and false positives, true and false negatives, precision and
    recall when predictions of at least each threshold k / (num_thresholds - 1) count as
    positive (a prediction falls in bucket floor(p * (num_thresholds - 1)))."""
    labels = labels.reshape(-1).astype(np.float64)
    predictions = predictions.reshape(-1)
    weights = np.broadcast_to(np.float64(1.0) if weights is None else _array(weights),
                              labels.shape).reshape(-1)
    if labels.shape != predictions.shape:
        raise ValueError(f"add_pr_curve: labels and predictions differ in size "
                         f"({labels.size} and {predictions.size})")
    if predictions.size and (predictions.min() < 0 or predictions.max() > 1):
        raise ValueError("add_pr_curve: predictions must lie in [0, 1]")
    buckets = np.floor(predictions * (num_thresholds - 1)).astype(np.int64)
    positives = np.bincount(buckets, labels * weights, num_thresholds)
    negatives = np.bincount(buckets, (1.0 - labels) * weights, num_thresholds)
    tp = np.cumsum(positives[::-1])[::-1]          # predictions in this bucket or above
    fp = np.cumsum(negatives[::-1])[::-1]
    tn, fn = fp[0] - fp, tp[0] - tp
    tiny = 1e-7                                     # no division by zero for empty rows
    return np.stack([tp, fp, tn, fn, tp / np.maximum(tiny, tp + fp),
                     tp / np.maximum(tiny, tp + fn)])


def _hparam_value(value) -> tuple:
    """(api_pb2 data type, the google.protobuf.Value setter's field, the value); a bool is a
    number (1 or 0), as PyTorch writes it."""
    if isinstance(value, (int, float)):
        return api_pb2.DATA_TYPE_FLOAT64, "number_value", float(value)
    if isinstance(value, str):
        return api_pb2.DATA_TYPE_STRING, "string_value", value
    if isinstance(value, kiln.Tensor) and value.numel() == 1:
        return api_pb2.DATA_TYPE_FLOAT64, "number_value", float(value.item())
    raise ValueError(f"add_hparams: a value must be a bool, number, string or one-element "
                     f"tensor, got {type(value).__name__}")


def _plugin_summary(tag: str, plugin_content: bytes) -> summary_pb2.Summary:
    meta = hparams_metadata.create_summary_metadata(
        plugin_data_pb2.HParamsPluginData.FromString(plugin_content))
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(
        tag=tag, metadata=meta, tensor=hparams_metadata.NULL_TENSOR)])


class SummaryWriter:
    """Writes summaries for TensorBoard into event files under `log_dir` (default
    `runs/<month><day>_<hh-mm-ss>_<host><comment>`), as torch.utils.tensorboard.SummaryWriter.

    Values may be kiln tensors (on any device), NumPy arrays or Python numbers.
    """

    def __init__(self, log_dir: str | None = None, comment: str = "",
                 purge_step: int | None = None, max_queue: int = 10, flush_secs: int = 120,
                 filename_suffix: str = ""):
        if not log_dir:
            stamp = datetime.now().strftime("%b%d_%H-%M-%S")
            log_dir = os.path.join("runs", f"{stamp}_{socket.gethostname()}{comment}")
        self.log_dir = str(log_dir)
        self.purge_step = purge_step
        self.max_queue, self.flush_secs, self.filename_suffix = max_queue, flush_secs, \
            filename_suffix
        self._writers: dict = {}        # directory -> EventFileWriter, made on first use

    # ------------------------------------------------------------------ writing events
    def _writer(self, directory: str | None = None) -> EventFileWriter:
        directory = directory or self.log_dir
        writer = self._writers.get(directory)
        if writer is None:
            writer = self._writers[directory] = EventFileWriter(
                directory, self.max_queue, self.flush_secs, self.filename_suffix)
            if self.purge_step is not None and directory == self.log_dir:
                # TensorBoard drops the events of later steps that an earlier run wrote
                writer.add_event(event_pb2.Event(step=self.purge_step,
                                                 file_version="brain.Event:2"))
                writer.add_event(event_pb2.Event(step=self.purge_step, session_log=(
                    event_pb2.SessionLog(status=event_pb2.SessionLog.START))))
        return writer

    def _add(self, summary: summary_pb2.Summary, global_step, walltime,
             directory: str | None = None) -> None:
        event = event_pb2.Event(summary=summary,
                                wall_time=time.time() if walltime is None else walltime)
        if global_step is not None:
            event.step = int(global_step)
        self._writer(directory).add_event(event)

    def get_logdir(self) -> str:
        return self.log_dir

    # ------------------------------------------------------------------ summaries
    def add_scalar(self, tag: str, scalar_value, global_step=None, walltime=None,
                   new_style: bool = False, double_precision: bool = False) -> None:
        value = _array(scalar_value)
        if value.size != 1:
            raise ValueError(f"add_scalar: {tag!r}: expected one value, got an array of shape "
                             f"{list(value.shape)}")
        value = float(value.reshape(()))
        if new_style:       # a tensor summary of the scalars plugin, as PyTorch's new_style
            tensor = tensor_pb2.TensorProto(
                dtype="DT_DOUBLE" if double_precision else "DT_FLOAT",
                tensor_shape=TensorShapeProto(),
                **({"double_val": [value]} if double_precision else {"float_val": [value]}))
            meta = summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
                tag=tag, tensor=tensor, metadata=meta)])
        else:
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
                tag=tag, simple_value=value)])
        self._add(summary, global_step, walltime)

    def add_scalars(self, main_tag: str, tag_scalar_dict: dict, global_step=None,
                    walltime=None) -> None:
        """Each entry into its own run, `<log_dir>/<main_tag>_<key>`, under the tag
        `main_tag`, so TensorBoard draws them on one chart."""
        walltime = time.time() if walltime is None else walltime
        for key, value in tag_scalar_dict.items():
            directory = os.path.join(self.log_dir, f"{main_tag.replace('/', '_')}_{key}")
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
                tag=main_tag, simple_value=float(_array(value).reshape(())))])
            self._add(summary, global_step, walltime, directory)

    def add_histogram(self, tag: str, values, global_step=None, bins="tensorflow",
                      walltime=None, max_bins: int | None = None) -> None:
        if isinstance(bins, str) and bins == "tensorflow":
            bins = _tensorflow_bins()
        histo = _histogram(_array(values), bins, max_bins)
        self._add(summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, histo=histo)]),
                  global_step, walltime)

    def add_image(self, tag: str, img_tensor, global_step=None, walltime=None,
                  dataformats: str = "CHW") -> None:
        image = _uint8(_to_hwc(_array(img_tensor), dataformats))
        self._add(_image_summary(tag, image), global_step, walltime)

    def add_images(self, tag: str, img_tensor, global_step=None, walltime=None,
                   dataformats: str = "NCHW") -> None:
        """A batch of images, tiled into one grid image."""
        images = _array(img_tensor)
        dataformats = dataformats.upper()
        if not dataformats.startswith("N") or images.ndim != len(dataformats):
            raise ValueError(f"add_images: dataformats {dataformats!r} does not describe a "
                             f"batch of shape {list(images.shape)}")
        tiles = np.stack([_to_hwc(im, dataformats[1:]) for im in images])
        self._add(_image_summary(tag, _uint8(_grid(tiles))), global_step, walltime)

    def add_figure(self, tag: str, figure, global_step=None, close: bool = True,
                   walltime=None) -> None:
        """A matplotlib figure (or a list of them, as a grid), drawn to RGBA pixels."""
        figures = figure if isinstance(figure, list) else [figure]
        pixels = []
        for fig in figures:
            fig.canvas.draw()
            pixels.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
            if close:
                import matplotlib.pyplot as plt
                plt.close(fig)
        image = pixels[0] if len(pixels) == 1 else _grid(np.stack(pixels))
        self._add(_image_summary(tag, image), global_step, walltime)

    def add_text(self, tag: str, text_string: str, global_step=None, walltime=None) -> None:
        tensor = tensor_pb2.TensorProto(
            dtype="DT_STRING", string_val=[text_string.encode("utf-8")],
            tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
        meta = text_metadata.create_summary_metadata(display_name=None, description=None)
        self._add(summary_pb2.Summary(value=[summary_pb2.Summary.Value(
            tag=f"{tag}/text_summary", metadata=meta, tensor=tensor)]), global_step, walltime)

    def add_hparams(self, hparam_dict: dict, metric_dict: dict, hparam_domain_discrete=None,
                    run_name: str | None = None, global_step=None) -> None:
        """One hparams session: the hyperparameters and the metrics it reached, in a run of
        its own (`<log_dir>/<run_name or the time>`), as PyTorch writes it."""
        if not isinstance(hparam_dict, dict) or not isinstance(metric_dict, dict):
            raise TypeError("add_hparams: hparam_dict and metric_dict must be dicts")
        infos, start = [], plugin_data_pb2.SessionStartInfo()
        for name, value in hparam_dict.items():
            kind, field, v = _hparam_value(value)
            setattr(start.hparams[name], field, v)
            info = api_pb2.HParamInfo(name=name, type=kind)
            domain = (hparam_domain_discrete or {}).get(name)
            if domain is not None:
                for d in domain:
                    setattr(info.domain_discrete.values.add(), field, _hparam_value(d)[2])
            infos.append(info)
        experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=[
            api_pb2.MetricInfo(name=api_pb2.MetricName(tag=k)) for k in metric_dict])
        version = hparams_metadata.PLUGIN_DATA_VERSION
        directory = os.path.join(self.log_dir, run_name or str(time.time()))
        for tag, data in [
                (hparams_metadata.EXPERIMENT_TAG,
                 plugin_data_pb2.HParamsPluginData(experiment=experiment, version=version)),
                (hparams_metadata.SESSION_START_INFO_TAG,
                 plugin_data_pb2.HParamsPluginData(session_start_info=start, version=version)),
                (hparams_metadata.SESSION_END_INFO_TAG,
                 plugin_data_pb2.HParamsPluginData(session_end_info=(
                     plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS)),
                     version=version))]:
            self._add(_plugin_summary(tag, data.SerializeToString()), global_step, None,
                      directory)
        for tag, value in metric_dict.items():
            self._add(summary_pb2.Summary(value=[summary_pb2.Summary.Value(
                tag=tag, simple_value=float(_array(value).reshape(())))]), global_step, None,
                directory)

    def add_pr_curve(self, tag: str, labels, predictions, global_step=None,
                     num_thresholds: int = 127, weights=None, walltime=None) -> None:
        """A precision-recall curve of binary `labels` against `predictions` in [0, 1]."""
        num_thresholds = min(num_thresholds, 127)
        data = _pr_curve(_array(labels), _array(predictions).astype(np.float64),
                         num_thresholds, weights)
        meta = pr_curve_metadata.create_summary_metadata(display_name=tag, description="",
                                                         num_thresholds=num_thresholds)
        meta.display_name = ""          # as PyTorch writes it: TensorBoard shows the tag
        tensor = tensor_pb2.TensorProto(dtype="DT_FLOAT", float_val=data.reshape(-1).tolist(),
                                        tensor_shape=TensorShapeProto(dim=[
                                            TensorShapeProto.Dim(size=n) for n in data.shape]))
        self._add(summary_pb2.Summary(value=[summary_pb2.Summary.Value(
            tag=tag, metadata=meta, tensor=tensor)]), global_step, walltime)

    def add_embedding(self, mat, metadata=None, label_img=None, global_step=None,
                      tag: str = "default", metadata_header=None) -> None:
        """Points for TensorBoard's projector: `<log_dir>/<step:05>/<tag>/tensors.tsv`, the
        labels in metadata.tsv, the label images in sprite.png, and an entry appended to
        projector_config.pbtxt."""
        mat = _array(mat)
        if mat.ndim != 2:
            raise ValueError(f"add_embedding: mat must be 2-D (points x features), got shape "
                             f"{list(mat.shape)}")
        step = 0 if global_step is None else int(global_step)
        sub = f"{step:05}/{tag}"
        directory = os.path.join(self.log_dir, sub)
        os.makedirs(directory, exist_ok=True)
        entry = ProjectorConfig().embeddings.add(tensor_name=f"{tag}:{step:05}",
                                                 tensor_path=f"{sub}/tensors.tsv")
        with open(os.path.join(directory, "tensors.tsv"), "w") as f:
            for row in mat.tolist():
                f.write("\t".join(str(float(v)) for v in row) + "\n")
        if metadata is not None:
            if len(metadata) != mat.shape[0]:
                raise ValueError(f"add_embedding: {len(metadata)} metadata rows for "
                                 f"{mat.shape[0]} points")
            lines = [] if metadata_header is None else \
                ["\t".join(str(h) for h in metadata_header)]
            lines += ["\t".join(str(v) for v in row) if metadata_header is not None else
                      str(row) for row in metadata]
            with open(os.path.join(directory, "metadata.tsv"), "w") as f:
                f.write("\n".join(lines) + "\n")
            entry.metadata_path = f"{sub}/metadata.tsv"
        if label_img is not None:
            images = _array(label_img)
            if images.ndim != 4 or images.shape[0] != mat.shape[0]:
                raise ValueError(f"add_embedding: label_img must be (points, C, H, W) with one "
                                 f"image per point, got shape {list(images.shape)}")
            tiles = np.stack([_to_hwc(im, "CHW") for im in images])
            grid = _grid(tiles, int(math.ceil(len(tiles) ** 0.5)))
            square = np.zeros((grid.shape[1], grid.shape[1], grid.shape[2]), grid.dtype)
            square[:grid.shape[0]] = grid[:square.shape[0]]
            with open(os.path.join(directory, "sprite.png"), "wb") as f:
                f.write(_png(_uint8(square)))
            entry.sprite.image_path = f"{sub}/sprite.png"
            entry.sprite.single_image_dim.extend(images.shape[2:4][::-1])
        config = ProjectorConfig()
        config.embeddings.append(entry)
        os.makedirs(self.log_dir, exist_ok=True)
        with open(os.path.join(self.log_dir, "projector_config.pbtxt"), "a") as f:
            f.write(text_format.MessageToString(config))
        self._writer()          # an events file, so TensorBoard lists the run

    def add_graph(self, model, input_to_model=None, verbose: bool = False,
                  use_strict_trace: bool = True) -> None:
        """The graph of `model(*input_to_model)` as kiln traces it: a node per input (named
        by its module path, `input/0.weight`), per primitive op (under the composite that made
        it, `linear/matmul_1`) and per output, each with its shape."""
        args = input_to_model if isinstance(input_to_model, (tuple, list)) else \
            (() if input_to_model is None else (input_to_model,))
        captured = kiln.compiler.trace(model, *args)
        if captured.breaks or len(captured.graphs) != 1:
            raise RuntimeError(f"add_graph: the model's forward cannot be traced as one graph "
                               f"({captured.breaks[0] if captured.breaks else 'no graph'})")
        graph = captured.graphs[0]
        names, nodes = {}, []

        def add(name: str, op: str, value, inputs=()) -> None:
            shape = TensorShapeProto(dim=[TensorShapeProto.Dim(size=int(s))
                                          for s in value.shape])
            nodes.append(NodeDef(name=name, op=op, input=list(inputs), attr={
                "_output_shapes": AttrValue(list=AttrValue.ListValue(shape=[shape]))}))
        for v in graph.inputs:
            names[v] = f"input/{v.name.removeprefix('self.')}"
            add(names[v], "IO Node", v)
        for v in graph.constants:
            names[v] = f"constant/{v.name}"
            add(names[v], "Const", v)
        for i, node in enumerate(graph.nodes):
            names[node.out] = "/".join(node.scope + (f"{node.op}_{i}",))
            add(names[node.out], node.op, node.out,
                [names[v] for v in node.inputs if v in names])
        for j, v in enumerate(graph.outputs):
            add(f"output/output.{j}", "IO Node", v, [names[v]])
        self._writer().add_event(event_pb2.Event(
            graph_def=graph_pb2.GraphDef(node=nodes).SerializeToString(),
            wall_time=time.time()))

    # ------------------------------------------------------------------ files
    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.flush()
            writer.close()
        self._writers = {}

    def __enter__(self) -> "SummaryWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

