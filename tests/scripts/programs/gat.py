"""Graph attention network in pytorch/examples' gat style: multi-head attention over a dense
adjacency (node features projected by one weight, per-head source/target scores from a
(heads, 2*hidden, 1) attention vector, a LeakyReLU, non-edges masked with torch.where before a
row softmax, attention dropout), heads averaged or concatenated, ELU between the two layers,
log_softmax and NLLLoss on a torch.randperm split, Adam with weight decay, accuracy under
no_grad. The graph is a synthetic Cora written to `content`/`cites` files and read back with
np.genfromtxt; self-loops come from torch.eye plus a sparse COO adjacency."""
import os
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Adam


class GraphAttentionLayer(nn.Module):
    def __init__(self, in_features, out_features, n_heads, concat=False, dropout=0.4,
                 leaky_relu_slope=0.2):
        super(GraphAttentionLayer, self).__init__()
        self.n_heads = n_heads
        self.concat = concat
        self.dropout = dropout
        if concat:
            assert out_features % n_heads == 0
            self.out_features = out_features
            self.n_hidden = out_features // n_heads
        else:
            self.n_hidden = out_features
        self.W = nn.Parameter(torch.empty(size=(in_features, self.n_hidden * n_heads)))
        self.a = nn.Parameter(torch.empty(size=(n_heads, 2 * self.n_hidden, 1)))
        self.leakyrelu = nn.LeakyReLU(leaky_relu_slope)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.xavier_normal_(self.W)
        nn.init.xavier_normal_(self.a)

    def _get_attention_scores(self, h_transformed):
        # (heads, nodes, 1) + (heads, 1, nodes): every pair's score by broadcasting
        from_source = torch.matmul(h_transformed, self.a[:, :self.n_hidden, :])
        to_target = torch.matmul(h_transformed, self.a[:, self.n_hidden:, :])
        return self.leakyrelu(from_source + to_target.mT)

    def forward(self, h, adj_mat):
        n_nodes = h.shape[0]
        h_transformed = torch.mm(h, self.W)
        h_transformed = F.dropout(h_transformed, self.dropout, training=self.training)
        h_transformed = h_transformed.view(n_nodes, self.n_heads, self.n_hidden).permute(1, 0, 2)
        e = self._get_attention_scores(h_transformed)
        no_edge = -9e16 * torch.ones_like(e)
        e = torch.where(adj_mat > 0, e, no_edge)
        attention = F.softmax(e, dim=-1)
        attention = F.dropout(attention, self.dropout, training=self.training)
        h_prime = torch.matmul(attention, h_transformed)
        if self.concat:
            return h_prime.permute(1, 0, 2).contiguous().view(n_nodes, self.out_features)
        return h_prime.mean(dim=0)


class GAT(nn.Module):
    def __init__(self, in_features, n_hidden, n_heads, num_classes, concat=False, dropout=0.4,
                 leaky_relu_slope=0.2):
        super(GAT, self).__init__()
        self.gat1 = GraphAttentionLayer(in_features, n_hidden, n_heads, concat=concat,
                                        dropout=dropout, leaky_relu_slope=leaky_relu_slope)
        self.gat2 = GraphAttentionLayer(n_hidden, num_classes, 1, concat=False,
                                        dropout=dropout, leaky_relu_slope=leaky_relu_slope)

    def forward(self, input_tensor, adj_mat):
        x = F.elu(self.gat1(input_tensor, adj_mat))
        x = self.gat2(x, adj_mat)
        return F.log_softmax(x, dim=1)


def write_graph(path, seed, nodes=120, words=30, classes=3, edges=360):
    rng = np.random.default_rng(seed)
    ids = rng.choice(10 ** 5, nodes, replace=False)
    labels = rng.integers(0, classes, nodes)
    with open(os.path.join(path, "cora.content"), "w") as f:
        for node, label in zip(ids, labels):
            p = 0.05 + 0.25 * (np.arange(words) % classes == label)
            bits = (rng.random(words) < p).astype(int)
            f.write(f"{node}\t" + "\t".join(map(str, bits)) + f"\tlabel_{label}\n")
    with open(os.path.join(path, "cora.cites"), "w") as f:
        for _ in range(edges):
            a = rng.integers(nodes)
            same = np.flatnonzero(labels == labels[a])
            b = rng.choice(same) if rng.random() < 0.75 else rng.integers(nodes)
            f.write(f"{ids[a]}\t{ids[b]}\n")


def load_cora(path, device="cpu"):
    content = np.genfromtxt(os.path.join(path, "cora.content"), dtype=np.dtype(str))
    cites = np.genfromtxt(os.path.join(path, "cora.cites"), dtype=np.int32)
    features = torch.FloatTensor(content[:, 1:-1].astype(np.int32))
    row_scale = 1 / torch.sum(features, dim=1)
    row_scale[row_scale == float("inf")] = 0
    features = torch.diag(row_scale).to_sparse() @ features
    _, labels = np.unique(content[:, -1], return_inverse=True)
    labels = torch.LongTensor(labels)
    position = {node: i for i, node in enumerate(content[:, 0].astype(np.int32))}
    edges = np.array([[position[a], position[b]] for a, b in cites], dtype=np.int32)
    n = len(position)
    adj_mat = torch.sparse_coo_tensor(edges.T, torch.ones(len(edges)), (n, n), dtype=torch.int64)
    adj_mat = torch.eye(n) + adj_mat
    return features.to(device), labels.to(device), adj_mat.to(device)


def test(model, criterion, input, target, mask):
    model.eval()
    with torch.no_grad():
        output = model(*input)
        output, target = output[mask], target[mask]
        loss = criterion(output, target)
        acc = (output.argmax(dim=1) == target).float().sum() / len(target)
    return loss.item(), acc.item()


def main(seed=0, compile=False, initial_state=None, epochs=25, dropout_p=0.6, concat=False):
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as path:
        write_graph(path, seed=7)
        features, labels, adj_mat = load_cora(path)
    idx = torch.randperm(len(labels))
    idx_test, idx_val, idx_train = idx[:30], idx[30:50], idx[50:]

    model = GAT(features.shape[1], 16, 4, labels.max().item() + 1, concat=concat,
                dropout=dropout_p)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    criterion = nn.NLLLoss()

    def train_step(input, target, mask):
        optimizer.zero_grad()
        output = model(*input)
        loss = criterion(output[mask], target[mask])
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(epochs):
        model.train()
        losses.append(train_step((features, adj_mat), labels, idx_train).item())
        if epoch % 10 == 9:
            val_loss, val_acc = test(model, criterion, (features, adj_mat), labels, idx_val)
    test_loss, test_acc = test(model, criterion, (features, adj_mat), labels, idx_test)
    return {"losses": losses, "val_loss": val_loss, "test_loss": test_loss,
            "accuracy": test_acc, "split": idx[:8].tolist(), "initial_state": initial}
