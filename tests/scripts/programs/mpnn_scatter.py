"""A message-passing graph network written without torch_geometric, as PyG's own layers are
written underneath: graphs batched into one disjoint graph (an `edge_index` of shape (2, E)
offset per graph, a `batch` vector), messages from the source and target features and the edge
attributes, aggregated at the targets by `scatter_reduce(reduce="amax", include_self=False)`,
`scatter_reduce(reduce="mean", include_self=False)` and `index_add_` (sum, and the in-degree),
nodes without in-edges keeping zeros; a residual update with LayerNorm, global mean and max
pooling over `batch` (index_add_ and scatter_reduce again), a regression head under SmoothL1,
AdamW with a cosine schedule. The training step is the compiled function."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def scatter_amax(src, index, dim_size):
    out = torch.zeros(dim_size, src.size(1), dtype=src.dtype, device=src.device)
    return out.scatter_reduce(0, index.unsqueeze(-1).expand_as(src), src, reduce="amax",
                              include_self=False)


def scatter_mean(src, index, dim_size):
    out = torch.zeros(dim_size, src.size(1), dtype=src.dtype, device=src.device)
    return out.scatter_reduce(0, index.view(-1, 1).expand(-1, src.size(1)), src,
                              reduce="mean", include_self=False)


class MPNNLayer(nn.Module):
    def __init__(self, hidden, edge_dim):
        super().__init__()
        self.message_mlp = nn.Sequential(nn.Linear(2 * hidden + edge_dim, hidden), nn.ReLU(),
                                         nn.Linear(hidden, hidden))
        self.update_mlp = nn.Sequential(nn.Linear(4 * hidden, hidden), nn.ReLU(),
                                        nn.Linear(hidden, hidden))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x, edge_index, edge_attr):
        src, dst = edge_index
        msg = self.message_mlp(torch.cat([x[dst], x[src], edge_attr], dim=-1))
        num_nodes = x.size(0)
        agg_max = scatter_amax(msg, dst, num_nodes)
        agg_mean = scatter_mean(msg, dst, num_nodes)
        agg_sum = torch.zeros_like(x).index_add_(0, dst, msg)
        deg = torch.zeros(num_nodes, dtype=x.dtype).index_add_(0, dst, torch.ones_like(dst,
                                                                         dtype=x.dtype))
        agg_sum = agg_sum / deg.clamp(min=1).sqrt().unsqueeze(-1)
        out = self.update_mlp(torch.cat([x, agg_max, agg_mean, agg_sum], dim=-1))
        return self.norm(x + out)


class MPNN(nn.Module):
    def __init__(self, in_dim, edge_dim, hidden=16, num_layers=3):
        super().__init__()
        self.embed = nn.Linear(in_dim, hidden)
        self.layers = nn.ModuleList([MPNNLayer(hidden, edge_dim) for _ in range(num_layers)])
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, 1))

    def forward(self, x, edge_index, edge_attr, batch, num_graphs):
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h, edge_index, edge_attr)
        counts = torch.zeros(num_graphs, dtype=h.dtype).index_add_(
            0, batch, torch.ones(h.size(0), dtype=h.dtype))
        mean_pool = torch.zeros(num_graphs, h.size(1)).index_add_(0, batch, h) \
            / counts.unsqueeze(-1)
        max_pool = scatter_amax(h, batch, num_graphs)
        return self.head(torch.cat([mean_pool, max_pool], dim=-1)).squeeze(-1)


def make_batch(rng, num_graphs, nodes_per_graph=7, edges_per_graph=9):
    """Random directed graphs (some nodes without in-edges); the target is a smooth function of
    each graph's features and connectivity."""
    xs, edges, attrs, batch, targets = [], [], [], [], []
    for g in range(num_graphs):
        x = rng.standard_normal((nodes_per_graph, 4)).astype(np.float32)
        src = rng.integers(0, nodes_per_graph, edges_per_graph)
        dst = rng.integers(0, nodes_per_graph - 2, edges_per_graph)   # two nodes never targets
        w = rng.uniform(0.5, 1.5, (edges_per_graph, 2)).astype(np.float32)
        in_max = np.full(nodes_per_graph, 0.0)
        np.maximum.at(in_max, dst, x[src, 0])
        targets.append(np.tanh(in_max.mean() + 0.3 * x[:, 1].mean()) + 0.1 * w[:, 0].sum())
        xs.append(x)
        edges.append(np.stack([src, dst]) + g * nodes_per_graph)
        attrs.append(w)
        batch.append(np.full(nodes_per_graph, g))
    return (torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(edges, 1)),
            torch.from_numpy(np.concatenate(attrs)), torch.from_numpy(np.concatenate(batch)),
            torch.tensor(np.array(targets, dtype=np.float32)))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(31)
    batches = [make_batch(rng, 8) for _ in range(4)]
    test_batch = make_batch(rng, 8)
    model = MPNN(in_dim=4, edge_dim=2)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=12)

    def train_step(x, edge_index, edge_attr, batch, y):
        optimizer.zero_grad()
        pred = model(x, edge_index, edge_attr, batch, 8)
        loss = F.smooth_l1_loss(pred, y, beta=0.5)
        loss.backward()
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(3):
        for x, edge_index, edge_attr, batch, y in batches:
            losses.append(train_step(x, edge_index, edge_attr, batch, y).item())
            scheduler.step()

    model.eval()
    with torch.no_grad():
        x, edge_index, edge_attr, batch, y = test_batch
        pred = model(x, edge_index, edge_attr, batch, 8)
        h = model.embed(x)
        src, dst = edge_index
        agg = scatter_amax(h[src], dst, x.size(0))
        mean = scatter_mean(h[src], dst, x.size(0))
    values = {"pred": pred, "test_loss": F.smooth_l1_loss(pred, y, beta=0.5),
              "agg_max": agg, "agg_mean": mean}
    return {"losses": losses, "values": values, "initial_state": initial}
