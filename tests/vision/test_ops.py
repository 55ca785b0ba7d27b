"""torchvision.ops' box functions and detection losses (kiln.vision.ops; torchvision.ops was
missing). torchvision cannot be installed beside the CPU torch, so each is checked against
torchvision's formula written in torch (values and gradients), against hand-computed values,
and nms against a brute-force greedy suppression."""

import numpy as np
import pytest
import torch

import kiln
import kiln.vision.ops as ops


def _boxes(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 10, (n, 2))
    wh = rng.uniform(0.5, 5, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def _torch_inter_union(b1, b2):
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    lt = torch.max(b1[:, None, :2], b2[:, :2])
    rb = torch.min(b1[:, None, 2:], b2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    return inter, area1[:, None] + area2 - inter


def _torch_giou(b1, b2):
    inter, union = _torch_inter_union(b1, b2)
    lti = torch.min(b1[:, None, :2], b2[:, :2])
    rbi = torch.max(b1[:, None, 2:], b2[:, 2:])
    whi = (rbi - lti).clamp(min=0)
    areai = whi[:, :, 0] * whi[:, :, 1]
    return inter / union - (areai - union) / areai


def test_box_iou_and_generalized_iou_values_and_gradients():
    a, b = _boxes(0, 5), _boxes(1, 4)
    ka, kb = kiln.tensor(a, requires_grad=True), kiln.tensor(b)
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b)
    for k_fn, t_fn in ((ops.box_iou, lambda x, y: _torch_inter_union(x, y)[0]
                        / _torch_inter_union(x, y)[1]), (ops.generalized_box_iou, _torch_giou)):
        ka.grad, ta.grad = None, None
        got, want = k_fn(ka, kb), t_fn(ta, tb)
        np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-6)
        (got * got).sum().backward()
        (want * want).sum().backward()
        np.testing.assert_allclose(ka.grad.numpy(), ta.grad.numpy(), rtol=1e-5, atol=1e-7)
    # two unit squares overlapping by half: IoU 1/3; apart by one: GIoU -1/3
    sq = kiln.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert ops.box_iou(sq, kiln.tensor([[0.5, 0.0, 1.5, 1.0]])).item() == pytest.approx(1 / 3)
    assert ops.generalized_box_iou(sq, kiln.tensor([[2.0, 0.0, 3.0, 1.0]])).item() == \
        pytest.approx(-1 / 3)
    assert ops.box_area(kiln.tensor([[1, 1, 4, 3]])).dtype is kiln.int64


def test_generalized_box_iou_loss_and_sigmoid_focal_loss():
    a, b = _boxes(2, 6), _boxes(3, 6)
    ka = kiln.tensor(a, requires_grad=True)
    loss = ops.generalized_box_iou_loss(ka, kiln.tensor(b), reduction="mean")
    want = 1 - torch.diagonal(_torch_giou(torch.tensor(a), torch.tensor(b)))
    assert loss.item() == pytest.approx(want.mean().item(), rel=1e-5)
    loss.backward()
    assert np.isfinite(ka.grad.numpy()).all()
    assert ops.generalized_box_iou_loss(kiln.tensor(a), kiln.tensor(a), "sum").item() == \
        pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        ops.generalized_box_iou_loss(kiln.tensor(a), kiln.tensor(b), reduction="avg")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    y = (rng.random((4, 3)) > 0.5).astype(np.float32)
    tx = torch.tensor(x)
    p = torch.sigmoid(tx)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(tx, torch.tensor(y),
                                                              reduction="none")
    p_t = p * torch.tensor(y) + (1 - p) * (1 - torch.tensor(y))
    focal = ce * (1 - p_t) ** 2 * (0.25 * torch.tensor(y) + 0.75 * (1 - torch.tensor(y)))
    np.testing.assert_allclose(ops.sigmoid_focal_loss(kiln.tensor(x), kiln.tensor(y)).numpy(),
                               focal.numpy(), rtol=1e-6)


def test_box_convert_round_trips_and_clipping():
    b = kiln.tensor(_boxes(4, 3))
    for fmt in ("xywh", "cxcywh"):
        back = ops.box_convert(ops.box_convert(b, "xyxy", fmt), fmt, "xyxy")
        np.testing.assert_allclose(back.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ops.box_convert(kiln.tensor([[1.0, 2.0, 3.0, 4.0]]), "cxcywh",
                                               "xywh").numpy(), [[-0.5, 0.0, 3.0, 4.0]])
    clipped = ops.clip_boxes_to_image(kiln.tensor([[-1.0, 2.0, 12.0, 30.0]]), (20, 10))
    assert clipped.tolist() == [[0.0, 2.0, 10.0, 20.0]]
    assert ops.remove_small_boxes(kiln.tensor([[0.0, 0, 1, 1], [0, 0, 3, 3]]), 2).tolist() == [1]


def _brute_nms(boxes, scores, threshold):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if all(ops.box_iou(kiln.tensor(boxes[i:i + 1]), kiln.tensor(boxes[j:j + 1])).item()
               <= threshold for j in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(3))
def test_nms_and_batched_nms_match_greedy_suppression(seed):
    boxes = _boxes(seed, 30)
    scores = np.random.default_rng(seed).random(30).astype(np.float32)
    keep = ops.nms(kiln.tensor(boxes), kiln.tensor(scores), 0.3)
    assert keep.dtype is kiln.int64
    assert keep.tolist() == _brute_nms(boxes, scores, 0.3)
    classes = np.arange(30) % 2
    got = ops.batched_nms(kiln.tensor(boxes), kiln.tensor(scores), kiln.tensor(classes), 0.3)
    want = []
    for c in (0, 1):
        idx = np.flatnonzero(classes == c)
        want += [int(idx[i]) for i in _brute_nms(boxes[idx], scores[idx], 0.3)]
    assert sorted(got.tolist(), key=lambda i: -scores[i]) == \
        sorted(want, key=lambda i: -scores[i])
    assert got.tolist() == sorted(got.tolist(), key=lambda i: -scores[i])
