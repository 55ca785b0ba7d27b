"""torchvision.ops for kiln: the box operations and detection losses that single-stage
detectors use (areas, format conversion, pairwise IoU and GIoU, the GIoU loss, sigmoid focal
loss, clipping, and greedy non-maximum suppression), computed with kiln tensor ops in
torchvision's order so values, gradients and ties match it."""

from __future__ import annotations

import numpy as np

import kiln

__all__ = ["box_area", "box_convert", "box_iou", "generalized_box_iou",
           "generalized_box_iou_loss", "sigmoid_focal_loss", "clip_boxes_to_image",
           "remove_small_boxes", "nms", "batched_nms"]


def _check_boxes(op: str, boxes) -> None:
    if not isinstance(boxes, kiln.Tensor) or boxes.shape[-1:] != (4,):
        shape = tuple(boxes.shape) if isinstance(boxes, kiln.Tensor) else type(boxes).__name__
        raise ValueError(f"torchvision.ops.{op}: expected boxes of shape (..., 4), got {shape}")


def _upcast(t):
    """Float boxes at least float32, integer boxes int64, as torchvision computes areas."""
    if t.is_floating_point():
        return t if t.dtype in (kiln.float32, kiln.float64) else t.float()
    return t if t.dtype in (kiln.int32, kiln.int64) else t.int()


def box_area(boxes):
    """Areas of (x1, y1, x2, y2) boxes."""
    _check_boxes("box_area", boxes)
    boxes = _upcast(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_convert(boxes, in_fmt: str, out_fmt: str):
    """Between "xyxy", "xywh" (corner and size) and "cxcywh" (centre and size)."""
    formats = ("xyxy", "xywh", "cxcywh")
    if in_fmt not in formats or out_fmt not in formats:
        raise ValueError(f"torchvision.ops.box_convert: unsupported format {in_fmt!r} -> "
                         f"{out_fmt!r}; the formats are {formats}")
    if in_fmt == out_fmt:
        return boxes.clone()
    if in_fmt == "xywh":
        x, y, w, h = boxes.unbind(-1)
        boxes = kiln.stack([x, y, x + w, y + h], dim=-1)
    elif in_fmt == "cxcywh":
        cx, cy, w, h = boxes.unbind(-1)
        boxes = kiln.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
    if out_fmt == "xywh":
        x1, y1, x2, y2 = boxes.unbind(-1)
        return kiln.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)
    if out_fmt == "cxcywh":
        x1, y1, x2, y2 = boxes.unbind(-1)
        return kiln.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)
    return boxes


def _box_inter_union(boxes1, boxes2):
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = kiln.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = kiln.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = _upcast(rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    return inter, area1[:, None] + area2 - inter


def box_iou(boxes1, boxes2):
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes: (N, M)."""
    _check_boxes("box_iou", boxes1)
    _check_boxes("box_iou", boxes2)
    inter, union = _box_inter_union(boxes1, boxes2)
    return inter / union


def generalized_box_iou(boxes1, boxes2):
    """Pairwise generalized IoU: IoU minus the part of the enclosing box neither covers."""
    _check_boxes("generalized_box_iou", boxes1)
    _check_boxes("generalized_box_iou", boxes2)
    inter, union = _box_inter_union(boxes1, boxes2)
    iou = inter / union
    lti = kiln.min(boxes1[:, None, :2], boxes2[:, :2])
    rbi = kiln.max(boxes1[:, None, 2:], boxes2[:, 2:])
    whi = _upcast(rbi - lti).clamp(min=0)
    areai = whi[:, :, 0] * whi[:, :, 1]
    return iou - (areai - union) / areai


def generalized_box_iou_loss(boxes1, boxes2, reduction: str = "none", eps: float = 1e-7):
    """1 - GIoU of matching boxes (elementwise, not pairwise), reduced by "none", "mean" or
    "sum"; the intersection by a masked write, as torchvision's _loss_inter_union."""
    boxes1 = boxes1 if boxes1.is_floating_point() else boxes1.float()
    boxes2 = boxes2 if boxes2.is_floating_point() else boxes2.float()
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    xkis1, ykis1 = kiln.max(x1, x1g), kiln.max(y1, y1g)
    xkis2, ykis2 = kiln.min(x2, x2g), kiln.min(y2, y2g)
    intsctk = kiln.zeros_like(x1)
    mask = (ykis2 > ykis1) & (xkis2 > xkis1)
    intsctk[mask] = (xkis2[mask] - xkis1[mask]) * (ykis2[mask] - ykis1[mask])
    unionk = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intsctk
    iouk = intsctk / (unionk + eps)
    xc1, yc1 = kiln.min(x1, x1g), kiln.min(y1, y1g)
    xc2, yc2 = kiln.max(x2, x2g), kiln.max(y2, y2g)
    area_c = (xc2 - xc1) * (yc2 - yc1)
    loss = 1 - (iouk - ((area_c - unionk) / (area_c + eps)))
    return _reduce("generalized_box_iou_loss", loss, reduction)


def sigmoid_focal_loss(inputs, targets, alpha: float = 0.25, gamma: float = 2.0,
                       reduction: str = "none"):
    """RetinaNet's focal loss on logits: BCE scaled by (1 - p_t) ** gamma, weighted by alpha
    for positives and 1 - alpha for negatives (alpha < 0: unweighted)."""
    p = kiln.sigmoid(inputs)
    ce_loss = kiln.nn.functional.binary_cross_entropy_with_logits(inputs, targets,
                                                                  reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return _reduce("sigmoid_focal_loss", loss, reduction)


def _reduce(op: str, loss, reduction: str):
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"torchvision.ops.{op}: invalid reduction {reduction!r}; supported "
                     "reductions are 'none', 'mean' and 'sum'")


def clip_boxes_to_image(boxes, size):
    """xyxy boxes clamped inside an image of size (height, width)."""
    _check_boxes("clip_boxes_to_image", boxes)
    height, width = size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return kiln.stack((x, y), dim=-1).reshape(boxes.shape)


def remove_small_boxes(boxes, min_size: float):
    """Indices of the boxes whose width and height are both at least min_size."""
    _check_boxes("remove_small_boxes", boxes)
    ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = (ws >= min_size) & (hs >= min_size)
    return kiln.where(keep)[0]


def nms(boxes, scores, iou_threshold: float):
    """Greedy non-maximum suppression: the indices of the kept boxes, by decreasing score; a
    box is dropped when its IoU with a kept higher-scoring one exceeds iou_threshold. The
    kept set depends on the values, so this reads them (eagerly, as torchvision's kernel)."""
    _check_boxes("nms", boxes)
    if scores.ndim != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"torchvision.ops.nms: expected one score per box, got boxes of shape "
                         f"{tuple(boxes.shape)} and scores of shape {tuple(scores.shape)}")
    b = boxes.detach().cpu().numpy()
    s = scores.detach().cpu().numpy()
    order = np.argsort(-s, kind="stable")
    x1, y1, x2, y2 = (b[:, i] for i in range(4))
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(s), dtype=bool)
    keep = []
    for _i, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[_i + 1:]
        xx1, yy1 = np.maximum(x1[i], x1[rest]), np.maximum(y1[i], y1[rest])
        xx2, yy2 = np.minimum(x2[i], x2[rest]), np.minimum(y2[i], y2[rest])
        inter = np.maximum(0, xx2 - xx1) * np.maximum(0, yy2 - yy1)
        ovr = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[ovr > iou_threshold]] = True
    return kiln.tensor(np.asarray(keep, dtype=np.int64), device=boxes.device)


def batched_nms(boxes, scores, idxs, iou_threshold: float):
    """NMS within each category of `idxs` (boxes of different categories never suppress one
    another): the boxes are offset per category by more than their extent, as torchvision's
    coordinate trick does."""
    _check_boxes("batched_nms", boxes)
    if boxes.numel() == 0:
        return kiln.empty((0,), dtype=kiln.int64, device=boxes.device)
    max_coordinate = boxes.max()
    offsets = idxs.to(boxes) * (max_coordinate + kiln.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)
