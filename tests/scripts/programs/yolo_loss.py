"""A YOLO-style single-stage detector's training loss and evaluation as the small
reimplementations write it (torchvision's box ops by hand, as many do): a conv backbone to an
S x S grid with, per cell, an objectness logit, a box (YOLOv5's sigmoid offsets around the cell and
`(2 sigmoid)^2` times an anchor) and class logits; targets built by integer indexing (the cell of
each box's centre from `(cx * S).long()`, written with `target[b, gj, gi] = ...`); CIoU-free
GIoU loss (`1 - giou`, YOLOv5's bbox_iou with clamps) on the responsible cells picked by
`pred[b, gj, gi]``, objectness BCE with logits against the
detached IoU, cross-entropy on the classes; at evaluation boxes decoded over the whole grid,
filtered by confidence and kept by a hand-written greedy NMS (`argsort(descending=True)`, a
while loop over the kept box's IoUs)."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

S, N_CLS, ANCHOR = 4, 3, 0.3


def box_cxcywh_to_xyxy(b):
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_area(b):
    return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def box_iou(boxes1, boxes2):
    """Pairwise IoU of (N, 4) and (M, 4) boxes in xyxy form, as torchvision.ops.box_iou."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2 - inter)


def generalized_box_iou_loss(b1, b2, eps=1e-7):
    """1 - GIoU of matching boxes, elementwise, as torchvision.ops.generalized_box_iou_loss."""
    x1, y1, x2, y2 = b1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = b2.unbind(dim=-1)
    xkis1, ykis1 = torch.max(x1, x1g), torch.max(y1, y1g)
    xkis2, ykis2 = torch.min(x2, x2g), torch.min(y2, y2g)
    intsctk = torch.zeros_like(x1)
    mask = (ykis2 > ykis1) & (xkis2 > xkis1)
    intsctk[mask] = (xkis2[mask] - xkis1[mask]) * (ykis2[mask] - ykis1[mask])
    unionk = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intsctk
    iouk = intsctk / (unionk + eps)
    xc1, yc1 = torch.min(x1, x1g), torch.min(y1, y1g)
    xc2, yc2 = torch.max(x2, x2g), torch.max(y2, y2g)
    area_c = (xc2 - xc1) * (yc2 - yc1)
    return 1 - (iouk - ((area_c - unionk) / (area_c + eps))), iouk


def nms(boxes, scores, iou_threshold):
    """Greedy non-maximum suppression; the kept indices by decreasing score."""
    order = scores.argsort(descending=True)
    keep = []
    while order.numel() > 0:
        i = order[0]
        keep.append(i.item())
        if order.numel() == 1:
            break
        ious = box_iou(boxes[i].unsqueeze(0), boxes[order[1:]]).squeeze(0)
        order = order[1:][ious <= iou_threshold]
    return torch.tensor(keep, dtype=torch.long)


class TinyYolo(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8),
            nn.SiLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16),
            nn.SiLU())
        self.head = nn.Conv2d(16, 5 + N_CLS, 1)

    def forward(self, x):
        return self.head(self.backbone(x)).permute(0, 2, 3, 1)     # (B, S, S, 5 + C)


def decode(pred):
    """Boxes (cx, cy, w, h) in image units from the raw outputs over the grid."""
    b = pred.shape[0]
    gy, gx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).float().expand(b, S, S, 2)
    xy = (torch.sigmoid(pred[..., 1:3]) * 2 - 0.5 + grid) / S       # YOLOv5's decoding
    wh = (torch.sigmoid(pred[..., 3:5]) * 2) ** 2 * ANCHOR
    return torch.cat([xy, wh], dim=-1)


def build_targets(boxes, labels):
    """Per image one box: the grid cell of its centre, by integer indexing (YOLOv5's indices
    (b, gj, gi)), and a dense objectness map written through them."""
    b = boxes.shape[0]
    gi = (boxes[:, 0] * S).long().clamp(0, S - 1)
    gj = (boxes[:, 1] * S).long().clamp(0, S - 1)
    bi = torch.arange(b)
    obj = torch.zeros(b, S, S)
    obj[bi, gj, gi] = 1.0
    return (bi, gj, gi), obj, boxes, labels


def bbox_giou(box1, box2, eps=1e-7):
    """GIoU of matching (cx, cy, w, h) boxes, as YOLOv5's bbox_iou(..., GIoU=True)."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.chunk(4, -1), box2.chunk(4, -1)
    b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = (b1_x2.minimum(b2_x2) - b1_x1.maximum(b2_x1)).clamp(0) * \
            (b1_y2.minimum(b2_y2) - b1_y1.maximum(b2_y1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = b1_x2.maximum(b2_x2) - b1_x1.minimum(b2_x1)
    ch = b1_y2.maximum(b2_y2) - b1_y1.minimum(b2_y1)
    c_area = cw * ch + eps
    return (iou - (c_area - union) / c_area).squeeze(-1), iou.squeeze(-1)


def yolo_loss(pred, indices, obj, tbox, tcls):
    bi, gj, gi = indices
    ps = pred[bi, gj, gi]                       # the responsible cells' outputs
    pbox = decode(pred)[bi, gj, gi]
    giou, iou = bbox_giou(pbox, tbox)
    lbox = (1.0 - giou).mean()
    tobj = torch.zeros_like(obj)
    tobj[bi, gj, gi] = iou.detach().clamp(0).type(tobj.dtype)
    lobj = F.binary_cross_entropy_with_logits(pred[..., 0], tobj)
    lcls = F.cross_entropy(ps[:, 5:], tcls)
    return 5.0 * lbox + lobj + lcls, (lbox.detach(), lobj.detach(), lcls.detach())


def make_data(rng, n):
    imgs = rng.uniform(0, 0.1, size=(n, 3, 16, 16)).astype(np.float32)
    boxes = np.zeros((n, 4), np.float32)
    labels = rng.integers(0, N_CLS, size=n)
    for i in range(n):
        w, h = rng.uniform(0.2, 0.45, size=2)
        cx, cy = rng.uniform(w / 2, 1 - w / 2), rng.uniform(h / 2, 1 - h / 2)
        boxes[i] = cx, cy, w, h
        x0, x1 = int((cx - w / 2) * 16), int((cx + w / 2) * 16)
        y0, y1 = int((cy - h / 2) * 16), int((cy + h / 2) * 16)
        imgs[i, labels[i], y0:y1, x0:x1] += 0.9
    return torch.from_numpy(imgs), torch.from_numpy(boxes), torch.from_numpy(labels)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(8)
    imgs, boxes, labels = make_data(rng, 32)
    model = TinyYolo()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)

    def train_step(x, indices, obj, tbox, tcls):
        pred = model(x)
        loss, parts = yolo_loss(pred, indices, obj, tbox, tcls)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss, parts

    if compile:
        train_step = torch.compile(train_step)
    losses, parts_log = [], []
    model.train()
    for epoch in range(3):
        for x, bx, lb in zip(imgs.split(8), boxes.split(8), labels.split(8)):
            indices, obj, tbox, tcls = build_targets(bx, lb)
            loss, parts = train_step(x, indices, obj, tbox, tcls)
            losses.append(loss.item())
            parts_log.append(torch.stack(parts))

    model.eval()
    with torch.no_grad():
        pred = model(imgs[:4])
        pbox = box_cxcywh_to_xyxy(decode(pred)).reshape(4, -1, 4)
        conf = torch.sigmoid(pred[..., 0]).reshape(4, -1)
    # YOLOv5's GIoU against torchvision's form (masked intersection) on shifted boxes
    shifted = boxes[:8] + torch.tensor([0.1, -0.05, 0.1, 0.0])
    giou_yolo, _ = bbox_giou(shifted, boxes[:8])
    giou_loss_tv, _ = generalized_box_iou_loss(box_cxcywh_to_xyxy(shifted),
                                               box_cxcywh_to_xyxy(boxes[:8]))
    kept, best_iou = [], []
    for i in range(4):
        sel = conf[i] > 0.2
        b, s = pbox[i][sel], conf[i][sel]
        keep = nms(b, s, 0.2)
        kept.append(len(keep))
        truth = box_cxcywh_to_xyxy(boxes[i:i + 1])
        best_iou.append(box_iou(b[keep[:1]], truth).max() if len(keep) else torch.tensor(0.))
    values = {"parts": torch.stack(parts_log), "conf": conf,
              "kept": ",".join(str(n) for n in kept), "best_iou": torch.stack(best_iou),
              "iou_matrix": box_iou(box_cxcywh_to_xyxy(boxes[:5]), box_cxcywh_to_xyxy(boxes[:5])),
              "giou_forms_agree": bool(torch.allclose(1 - giou_yolo, giou_loss_tv, atol=1e-6)),
              "giou": giou_yolo}
    return {"losses": losses, "values": values, "initial_state": initial}
