"""Graph convolutional network in pytorch/examples' gcn style: a Cora-like citation graph read
from `content`/`cites` files with np.genfromtxt, features row-normalized through a sparse
diagonal, the adjacency built with torch.sparse_coo_tensor, self-loops added densely, the
renormalization D^-1/2 (A + I) D^-1/2 done with sparse diagonals, the layers' kernels made with
the legacy torch.Tensor(in, out) and xavier_normal_, torch.spmm in forward, Adam with weight
decay, NLLLoss on index masks, evaluation under no_grad. The graph is synthetic: nodes of one
class cite each other more often and use their class's words more often."""
import os
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Adam


class GraphConv(nn.Module):
    def __init__(self, input_dim, output_dim, use_bias=False):
        super(GraphConv, self).__init__()
        self.kernel = nn.Parameter(torch.Tensor(input_dim, output_dim))
        nn.init.xavier_normal_(self.kernel)
        self.bias = None
        if use_bias:
            self.bias = nn.Parameter(torch.Tensor(output_dim))
            nn.init.zeros_(self.bias)

    def forward(self, input_tensor, adj_mat):
        support = torch.mm(input_tensor, self.kernel)
        output = torch.spmm(adj_mat, support)
        if self.bias is not None:
            output = output + self.bias
        return output


class GCN(nn.Module):
    def __init__(self, input_dim, hidden_dim, output_dim, use_bias=True, dropout_p=0.1):
        super(GCN, self).__init__()
        self.gcn_layer1 = GraphConv(input_dim, hidden_dim, use_bias=use_bias)
        self.gcn_layer2 = GraphConv(hidden_dim, output_dim, use_bias=use_bias)
        self.dropout = nn.Dropout(dropout_p)

    def forward(self, input_tensor, adj_mat):
        x = self.gcn_layer1(input_tensor, adj_mat)
        x = F.relu(x)
        x = self.dropout(x)
        x = self.gcn_layer2(x, adj_mat)
        return F.log_softmax(x, dim=1)


def write_graph(path, seed, nodes=240, words=40, classes=4, edges=700):
    rng = np.random.default_rng(seed)
    ids = rng.choice(10 ** 6, nodes, replace=False)
    labels = rng.integers(0, classes, nodes)
    with open(os.path.join(path, "cora.content"), "w") as f:
        for node, label in zip(ids, labels):
            p = 0.04 + 0.2 * (np.arange(words) % classes == label)
            bits = (rng.random(words) < p).astype(int)
            f.write(f"{node}\t" + "\t".join(map(str, bits)) + f"\tclass_{label}\n")
    with open(os.path.join(path, "cora.cites"), "w") as f:
        for _ in range(edges):
            a = rng.integers(nodes)
            peers = np.flatnonzero(labels == labels[a]) if rng.random() < 0.8 else np.arange(nodes)
            f.write(f"{ids[a]}\t{ids[rng.choice(peers)]}\n")


def load_cora(path, device="cpu"):
    content_tensor = np.genfromtxt(os.path.join(path, "cora.content"), dtype=np.dtype(str))
    cites_tensor = np.genfromtxt(os.path.join(path, "cora.cites"), dtype=np.int32)

    features = torch.FloatTensor(content_tensor[:, 1:-1].astype(np.int32))
    scale_vector = torch.sum(features, dim=1)
    scale_vector = 1 / scale_vector
    scale_vector[scale_vector == float("inf")] = 0
    scale_vector = torch.diag(scale_vector).to_sparse()
    features = scale_vector @ features

    classes, labels = np.unique(content_tensor[:, -1], return_inverse=True)
    labels = torch.LongTensor(labels)

    idx = content_tensor[:, 0].astype(np.int32)
    idx_map = {id: pos for pos, id in enumerate(idx)}
    edges = np.array(list(map(lambda edge: [idx_map[edge[0]], idx_map[edge[1]]], cites_tensor)),
                     dtype=np.int32)

    V = len(idx)
    E = edges.shape[0]
    adj_mat = torch.sparse_coo_tensor(edges.T, torch.ones(E), (V, V), dtype=torch.int64)
    adj_mat = torch.eye(V) + adj_mat

    degree_mat = torch.sum(adj_mat, dim=1)
    degree_mat = torch.sqrt(1 / degree_mat)
    degree_mat[degree_mat == float("inf")] = 0
    degree_mat = torch.diag(degree_mat).to_sparse()

    adj_mat = degree_mat @ adj_mat @ degree_mat
    return features.to_sparse().to(device), labels.to(device), adj_mat.to_sparse().to(device)


def test(model, criterion, input, target, mask):
    model.eval()
    with torch.no_grad():
        output = model(*input)
        output, target = output[mask], target[mask]
        loss = criterion(output, target)
        acc = (output.argmax(dim=1) == target).float().sum() / len(target)
    return loss.item(), acc.item()


def main(seed=0, compile=False, initial_state=None, epochs=30, dropout_p=0.1):
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as path:
        write_graph(path, seed=123)
        features, labels, adj_mat = load_cora(path)
    idx = torch.arange(len(labels))
    idx_test, idx_val, idx_train = idx[:60], idx[60:100], idx[100:]

    gcn = GCN(features.shape[1], 16, labels.max().item() + 1, True, dropout_p)
    if initial_state is not None:
        gcn.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in gcn.state_dict().items()}
    optimizer = Adam(gcn.parameters(), lr=0.02, weight_decay=5e-4)
    criterion = nn.NLLLoss()

    def train_step(input, target):
        optimizer.zero_grad()
        output = gcn(*input)
        loss = criterion(output[idx_train], target[idx_train])
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(epochs):
        gcn.train()
        losses.append(train_step((features, adj_mat), labels).item())
        if epoch % 10 == 9:
            val_loss, val_acc = test(gcn, criterion, (features, adj_mat), labels, idx_val)
    test_loss, test_acc = test(gcn, criterion, (features, adj_mat), labels, idx_test)
    return {"losses": losses, "val_loss": val_loss, "test_loss": test_loss,
            "accuracy": test_acc, "initial_state": initial}
