"""A DLRM-style click-through model as facebookresearch/dlrm's dlrm_s_pytorch.py writes it, on
synthetic clicks: a bottom MLP for the dense features, one `nn.EmbeddingBag(mode="sum",
sparse=True)` per categorical feature (`sparse=False` for dense gradients) looked up with flat
`indices` and `offsets` (a fixed number of ids per lookup, as its
--num-indices-per-lookup-fixed option makes them, the bags weighted by `per_sample_weights`),
the dot interaction (`torch.bmm` of the stacked features with their transpose, the strictly
upper triangle picked by `torch.triu_indices`), a top MLP under `BCEWithLogitsLoss`; SGD on the
embedding gradients and Adagrad on the dense layers. The training step is the compiled
function."""
import numpy as np
import torch
import torch.nn as nn


class DLRM_Net(nn.Module):
    def create_mlp(self, ln, sigmoid_layer=-1):
        layers = nn.ModuleList()
        for i in range(0, ln.size - 1):
            n, m = int(ln[i]), int(ln[i + 1])
            LL = nn.Linear(n, m, bias=True)
            # initialize the weights as DLRM does: Gaussian with the layer's fan
            mean = 0.0
            std_dev = np.sqrt(2 / (m + n))
            W = np.random.normal(mean, std_dev, size=(m, n)).astype(np.float32)
            std_dev = np.sqrt(1 / m)
            bt = np.random.normal(mean, std_dev, size=m).astype(np.float32)
            LL.weight.data = torch.tensor(W, requires_grad=True)
            LL.bias.data = torch.tensor(bt, requires_grad=True)
            layers.append(LL)
            if i != sigmoid_layer:
                layers.append(nn.ReLU())
        return torch.nn.Sequential(*layers)

    def create_emb(self, m, ln, sparse):
        emb_l = nn.ModuleList()
        for i in range(0, ln.size):
            n = ln[i]
            EE = nn.EmbeddingBag(n, m, mode="sum", sparse=sparse)
            W = np.random.uniform(low=-np.sqrt(1 / n), high=np.sqrt(1 / n),
                                  size=(n, m)).astype(np.float32)
            EE.weight.data = torch.tensor(W, requires_grad=True)
            emb_l.append(EE)
        return emb_l

    def __init__(self, m_spa, ln_emb, ln_bot, ln_top, sparse=True):
        super().__init__()
        self.emb_l = self.create_emb(m_spa, ln_emb, sparse)
        self.bot_l = self.create_mlp(ln_bot)
        # the last layer's logits go to BCEWithLogitsLoss: no sigmoid, no ReLU
        self.top_l = self.create_mlp(ln_top, sigmoid_layer=ln_top.size - 2)

    def apply_emb(self, lS_o, lS_i, lS_w):
        ly = []
        for k, sparse_index_group_batch in enumerate(lS_i):
            sparse_offset_group_batch = lS_o[k]
            per_sample_weights = lS_w[k] if lS_w is not None else None
            E = self.emb_l[k]
            V = E(sparse_index_group_batch, sparse_offset_group_batch,
                  per_sample_weights=per_sample_weights)
            ly.append(V)
        return ly

    def interact_features(self, x, ly):
        (batch_size, d) = x.shape
        T = torch.cat([x] + ly, dim=1).view((batch_size, -1, d))
        Z = torch.bmm(T, torch.transpose(T, 1, 2))
        _, ni, nj = Z.shape
        li, lj = torch.triu_indices(ni, nj, offset=1)
        Zflat = Z[:, li, lj]
        return torch.cat([x] + [Zflat], dim=1)

    def forward(self, dense_x, lS_o, lS_i, lS_w=None):
        x = self.bot_l(dense_x)
        ly = self.apply_emb(lS_o, lS_i, lS_w)
        z = self.interact_features(x, ly)
        return self.top_l(z)


def make_batch(rng, batch_size, ln_emb, n_dense, per_lookup, true_w):
    dense = rng.standard_normal((batch_size, n_dense)).astype(np.float32)
    lS_o, lS_i, lS_w, signal = [], [], [], dense @ true_w[:n_dense]
    for k, n in enumerate(ln_emb):
        idx = rng.integers(0, n, (batch_size, per_lookup))
        signal = signal + np.where(idx % 2 == 0, 0.5, -0.5).sum(1) * (1 if k % 2 else -1)
        lS_i.append(torch.from_numpy(idx.reshape(-1)))
        lS_o.append(torch.arange(0, batch_size * per_lookup, per_lookup))
        lS_w.append(torch.from_numpy(rng.uniform(0.5, 1.5, batch_size * per_lookup)
                                     .astype(np.float32)))
    clicks = (signal + 0.3 * rng.standard_normal(batch_size) > 0).astype(np.float32)
    return torch.from_numpy(dense), lS_o, lS_i, lS_w, torch.from_numpy(clicks).view(-1, 1)


def main(seed=0, compile=False, initial_state=None, sparse=True):
    torch.manual_seed(seed)
    np.random.seed(seed)
    m_spa, n_dense, per_lookup, batch_size = 8, 6, 3, 32
    ln_emb = np.array([40, 25, 60])
    ln_bot = np.array([n_dense, 16, m_spa])
    num_fea = ln_emb.size + 1
    num_int = (num_fea * (num_fea - 1)) // 2 + m_spa
    ln_top = np.array([num_int, 16, 1])
    dlrm = DLRM_Net(m_spa, ln_emb, ln_bot, ln_top, sparse=sparse)
    if initial_state is not None:
        dlrm.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in dlrm.state_dict().items()}

    sparse_params = [p for n, p in dlrm.named_parameters() if n.startswith("emb_l")]
    dense_params = [p for n, p in dlrm.named_parameters() if not n.startswith("emb_l")]
    optimizer_sparse = torch.optim.SGD(sparse_params, lr=0.5)
    optimizer_dense = torch.optim.Adagrad(dense_params, lr=0.05)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="mean")

    def train_step(X, lS_o, lS_i, lS_w, T):
        Z = dlrm(X, lS_o, lS_i, lS_w)
        E = loss_fn(Z, T)
        optimizer_sparse.zero_grad()
        optimizer_dense.zero_grad()
        E.backward()
        optimizer_sparse.step()
        optimizer_dense.step()
        return E.detach(), Z.detach()

    if compile:
        train_step = torch.compile(train_step)
    rng = np.random.default_rng(9)
    true_w = rng.standard_normal(n_dense).astype(np.float32)
    losses, accuracies = [], []
    for it in range(12):
        X, lS_o, lS_i, lS_w, T = make_batch(rng, batch_size, ln_emb, n_dense, per_lookup,
                                            true_w)
        E, Z = train_step(X, lS_o, lS_i, lS_w, T)
        losses.append(E.item())
        accuracies.append(int(((Z > 0).float() == T).sum().item()))

    with torch.no_grad():
        X, lS_o, lS_i, lS_w, T = make_batch(rng, 16, ln_emb, n_dense, per_lookup, true_w)
        scores = torch.sigmoid(dlrm(X, lS_o, lS_i, lS_w))
        unweighted = dlrm(X, lS_o, lS_i)
    values = {"scores": scores, "unweighted": unweighted, "accuracies": str(accuracies),
              "emb0": dlrm.emb_l[0].weight.detach(), "grad_is_sparse":
              bool(dlrm.emb_l[0].weight.grad.is_sparse),
              "adagrad_sum": optimizer_dense.state[dense_params[0]]["sum"]}
    return {"losses": losses, "values": values, "initial_state": initial}
