"""PointNet as its PyTorch re-implementations write it, on synthetic point clouds (points on a
sphere, a cube's surface or a cylinder): an input T-net and a feature T-net (Conv1d(k=1) shared
MLPs with BatchNorm1d, max over points, a regressed matrix plus the identity applied by
`torch.bmm`), the feature transform's orthogonality regulariser ||A A^T - I||, a classifier
head under NLL of log_softmax, and an auto-encoder head whose reconstruction is scored by the
Chamfer distance (`torch.cdist` then `min` both ways). Adam with StepLR. The training step is
the compiled function."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class STNkd(nn.Module):
    def __init__(self, k=64):
        super().__init__()
        self.conv1 = nn.Conv1d(k, 32, 1, bias=False)
        self.conv2 = nn.Conv1d(32, 64, 1, bias=False)
        self.fc1 = nn.Linear(64, 32, bias=False)
        self.fc2 = nn.Linear(32, k * k)
        self.bn1 = nn.BatchNorm1d(32)
        self.bn2 = nn.BatchNorm1d(64)
        self.bn3 = nn.BatchNorm1d(32)
        self.k = k

    def forward(self, x):
        batchsize = x.size()[0]
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = torch.max(x, 2, keepdim=True)[0]
        x = x.view(-1, 64)
        x = F.relu(self.bn3(self.fc1(x)))
        x = self.fc2(x)
        iden = torch.eye(self.k, dtype=torch.float32).flatten().view(1, self.k * self.k)
        iden = iden.repeat(batchsize, 1)
        x = x + iden
        return x.view(-1, self.k, self.k)


class PointNetfeat(nn.Module):
    def __init__(self, global_feat=True, feature_transform=False):
        super().__init__()
        self.stn = STNkd(k=3)
        self.conv1 = nn.Conv1d(3, 16, 1, bias=False)
        self.conv2 = nn.Conv1d(16, 32, 1, bias=False)
        self.conv3 = nn.Conv1d(32, 64, 1, bias=False)
        self.bn1 = nn.BatchNorm1d(16)
        self.bn2 = nn.BatchNorm1d(32)
        self.bn3 = nn.BatchNorm1d(64)
        self.global_feat = global_feat
        self.feature_transform = feature_transform
        if self.feature_transform:
            self.fstn = STNkd(k=16)

    def forward(self, x):
        n_pts = x.size()[2]
        trans = self.stn(x)
        x = x.transpose(2, 1)
        x = torch.bmm(x, trans)
        x = x.transpose(2, 1)
        x = F.relu(self.bn1(self.conv1(x)))
        if self.feature_transform:
            trans_feat = self.fstn(x)
            x = x.transpose(2, 1)
            x = torch.bmm(x, trans_feat)
            x = x.transpose(2, 1)
        else:
            trans_feat = None
        pointfeat = x
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        x = torch.max(x, 2, keepdim=True)[0]
        x = x.view(-1, 64)
        if self.global_feat:
            return x, trans, trans_feat
        x = x.view(-1, 64, 1).repeat(1, 1, n_pts)
        return torch.cat([x, pointfeat], 1), trans, trans_feat


class PointNetClsAE(nn.Module):
    def __init__(self, k=3, n_points=64):
        super().__init__()
        self.n_points = n_points
        self.feat = PointNetfeat(global_feat=True, feature_transform=True)
        self.fc1 = nn.Linear(64, 32, bias=False)
        self.fc2 = nn.Linear(32, k)
        self.dropout = nn.Dropout(p=0.0)
        self.bn1 = nn.BatchNorm1d(32)
        self.decoder = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, n_points * 3))

    def forward(self, x):
        g, trans, trans_feat = self.feat(x)
        x = F.relu(self.bn1(self.dropout(self.fc1(g))))
        x = self.fc2(x)
        recon = self.decoder(g).view(-1, self.n_points, 3)
        return F.log_softmax(x, dim=1), recon, trans, trans_feat


def feature_transform_regularizer(trans):
    d = trans.size()[1]
    I = torch.eye(d)[None, :, :]
    return torch.mean(torch.norm(torch.bmm(trans, trans.transpose(2, 1)) - I, dim=(1, 2)))


def chamfer_distance(a, b):
    """Mean squared distance from each point to its nearest neighbour in the other cloud."""
    d = torch.cdist(a, b) ** 2
    return d.min(dim=2)[0].mean(dim=1) + d.min(dim=1)[0].mean(dim=1)


def make_clouds(n, n_points, rng):
    clouds, labels = [], []
    for i in range(n):
        label = i % 3
        u = rng.uniform(-1, 1, (n_points, 3))
        if label == 0:                       # sphere
            p = u / np.linalg.norm(u, axis=1, keepdims=True)
        elif label == 1:                     # cube surface
            p = u.copy()
            face = rng.integers(0, 3, n_points)
            p[np.arange(n_points), face] = np.sign(u[np.arange(n_points), face])
        else:                                # cylinder
            theta = np.pi * u[:, 0]
            p = np.stack([np.cos(theta), np.sin(theta), u[:, 2]], axis=1)
        scale = rng.uniform(0.7, 1.3)
        clouds.append(scale * p + 0.02 * rng.standard_normal((n_points, 3)))
        labels.append(label)
    return (torch.from_numpy(np.array(clouds, dtype=np.float32)),
            torch.from_numpy(np.array(labels, dtype=np.int64)))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(4)
    n_points = 64
    points, target = make_clouds(48, n_points, rng)
    test_points, test_target = make_clouds(12, n_points, rng)

    classifier = PointNetClsAE(k=3, n_points=n_points)
    if initial_state is not None:
        classifier.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in classifier.state_dict().items()}
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=6, gamma=0.5)

    def train_step(points, target):
        points = points.transpose(2, 1)
        optimizer.zero_grad()
        pred, recon, trans, trans_feat = classifier(points)
        loss = F.nll_loss(pred, target)
        loss = loss + feature_transform_regularizer(trans_feat) * 0.001
        loss = loss + chamfer_distance(recon, points.transpose(2, 1)).mean()
        loss.backward()
        optimizer.step()
        return loss, pred

    if compile:
        train_step = torch.compile(train_step)
    losses, correct = [], []
    classifier.train()
    for epoch in range(3):
        for i in range(0, 48, 12):
            loss, pred = train_step(points[i:i + 12], target[i:i + 12])
            losses.append(loss.item())
            correct.append(pred.data.max(1)[1].eq(target[i:i + 12]).cpu().sum().item())
        scheduler.step()

    classifier.eval()
    with torch.no_grad():
        pred, recon, trans, trans_feat = classifier(test_points.transpose(2, 1))
        chamfer = chamfer_distance(recon, test_points)
        reg = feature_transform_regularizer(trans_feat)
    values = {"test_logprobs": pred, "chamfer": chamfer, "reg": reg, "trans": trans,
              "correct": str(correct),
              "running_var": classifier.feat.stn.bn2.running_var.clone()}
    return {"losses": losses, "values": values, "initial_state": initial}
