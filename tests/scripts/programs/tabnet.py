"""A TabNet-flavoured classifier as pytorch-tabnet and the from-scratch blog rewrites write it:
sparsemax as a custom `torch.autograd.Function` (forward by sort and cumsum to find the support
and the threshold tau, backward over the support set only), ghost batch normalization (the
batch split by `chunk` into virtual batches, each through one shared `BatchNorm1d`), feature
transformers of GLU blocks (`F.glu` over a doubled width, residuals scaled by sqrt(0.5)), an
attentive transformer whose sparsemax mask is weighted by prior scales that shrink with each
step's use (gamma), the sparsity regularizer (the mean entropy of the masks) added to the
cross-entropy, Adam with StepLR. The training step is the compiled function."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

N_FEATURES, N_CLASSES = 10, 3


class Sparsemax(torch.autograd.Function):
    """Sparsemax (Martins & Astudillo, 2016): the Euclidean projection onto the simplex."""

    @staticmethod
    def forward(ctx, input, dim=-1):
        ctx.dim = dim
        max_val, _ = input.max(dim=dim, keepdim=True)
        input = input - max_val                     # same numerical stability as softmax
        tau, supp_size = Sparsemax._threshold_and_support(input, dim=dim)
        output = torch.clamp(input - tau, min=0)
        ctx.save_for_backward(supp_size, output)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        supp_size, output = ctx.saved_tensors
        dim = ctx.dim
        grad_input = grad_output.clone()
        grad_input[output == 0] = 0
        v_hat = grad_input.sum(dim=dim) / supp_size.to(output.dtype).squeeze(dim)
        v_hat = v_hat.unsqueeze(dim)
        grad_input = torch.where(output != 0, grad_input - v_hat, grad_input)
        return grad_input, None

    @staticmethod
    def _threshold_and_support(input, dim=-1):
        input_srt, _ = torch.sort(input, descending=True, dim=dim)
        input_cumsum = input_srt.cumsum(dim) - 1
        d = input.shape[dim]
        rhos = torch.arange(1, d + 1, dtype=input.dtype)
        view = [1] * input.dim()
        view[0] = -1
        rhos = rhos.view(view).transpose(0, dim)
        support = rhos * input_srt > input_cumsum
        support_size = support.sum(dim=dim).unsqueeze(dim)
        tau = input_cumsum.gather(dim, support_size - 1)
        tau /= support_size.to(input.dtype)
        return tau, support_size


def sparsemax(x, dim=-1):
    return Sparsemax.apply(x, dim)


class GBN(nn.Module):
    """Ghost batch normalization: batch statistics over virtual batches of `vbs` rows."""

    def __init__(self, input_dim, virtual_batch_size=8, momentum=0.02):
        super().__init__()
        self.virtual_batch_size = virtual_batch_size
        self.bn = nn.BatchNorm1d(input_dim, momentum=momentum)

    def forward(self, x):
        chunks = x.chunk(int(np.ceil(x.shape[0] / self.virtual_batch_size)), 0)
        res = [self.bn(x_) for x_ in chunks]
        return torch.cat(res, dim=0)


class GLULayer(nn.Module):
    def __init__(self, input_dim, output_dim, fc=None, virtual_batch_size=8):
        super().__init__()
        self.output_dim = output_dim
        self.fc = fc if fc is not None else nn.Linear(input_dim, 2 * output_dim, bias=False)
        self.bn = GBN(2 * output_dim, virtual_batch_size)

    def forward(self, x):
        return F.glu(self.bn(self.fc(x)), dim=-1)


class FeatTransformer(nn.Module):
    """GLU layers whose linear maps every step shares, then the step's own; scaled residuals."""

    def __init__(self, input_dim, output_dim, shared_fcs, n_independent=1,
                 virtual_batch_size=8):
        super().__init__()
        self.layers = nn.ModuleList()
        fcs = list(shared_fcs) + [None] * n_independent
        dims = [input_dim] + [output_dim] * (len(fcs) - 1)
        for i, fc in enumerate(fcs):
            self.layers.append(GLULayer(dims[i], output_dim, fc, virtual_batch_size))
        self.scale = torch.sqrt(torch.FloatTensor([0.5]))

    def forward(self, x):
        x = self.layers[0](x)
        for layer in self.layers[1:]:
            x = (x + layer(x)) * self.scale
        return x


class AttentiveTransformer(nn.Module):
    def __init__(self, input_dim, group_dim, virtual_batch_size=8):
        super().__init__()
        self.fc = nn.Linear(input_dim, group_dim, bias=False)
        self.bn = GBN(group_dim, virtual_batch_size)

    def forward(self, priors, processed_feat):
        x = self.bn(self.fc(processed_feat))
        x = torch.mul(x, priors)
        return sparsemax(x, -1)


class TabNet(nn.Module):
    def __init__(self, input_dim, output_dim, n_d=8, n_a=8, n_steps=2, gamma=1.3,
                 n_shared=1, n_independent=1, epsilon=1e-15, virtual_batch_size=8):
        super().__init__()
        self.n_d, self.n_a, self.n_steps = n_d, n_a, n_steps
        self.gamma, self.epsilon = gamma, epsilon
        self.initial_bn = nn.BatchNorm1d(input_dim, momentum=0.01)
        shared = nn.ModuleList()
        for i in range(n_shared):
            shared.append(nn.Linear(input_dim if i == 0 else n_d + n_a, 2 * (n_d + n_a),
                                    bias=False))
        self.initial_splitter = FeatTransformer(input_dim, n_d + n_a, shared, n_independent,
                                                virtual_batch_size)
        self.feat_transformers = nn.ModuleList()
        self.att_transformers = nn.ModuleList()
        for _ in range(n_steps):
            self.feat_transformers.append(FeatTransformer(input_dim, n_d + n_a, shared,
                                                          n_independent, virtual_batch_size))
            self.att_transformers.append(AttentiveTransformer(n_a, input_dim,
                                                              virtual_batch_size))
        self.final_mapping = nn.Linear(n_d, output_dim, bias=False)

    def forward(self, x):
        x = self.initial_bn(x)
        prior = torch.ones(x.shape)
        M_loss = 0
        att = self.initial_splitter(x)[:, self.n_d:]
        steps_output, masks = [], []
        for step in range(self.n_steps):
            M = self.att_transformers[step](prior, att)
            M_loss += torch.mean(torch.sum(torch.mul(M, torch.log(M + self.epsilon)), dim=1))
            # update prior
            prior = torch.mul(self.gamma - M, prior)
            masked_x = torch.mul(M, x)
            out = self.feat_transformers[step](masked_x)
            d = F.relu(out[:, :self.n_d])
            steps_output.append(d)
            att = out[:, self.n_d:]
            masks.append(M)
        M_loss /= self.n_steps
        res = torch.sum(torch.stack(steps_output, dim=0), dim=0)
        return self.final_mapping(res), M_loss, torch.stack(masks, dim=1)


def make_data(rng, n):
    """Three classes decided by a few of the ten features; the rest are noise."""
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    score = np.stack([x[:, 0] + x[:, 1], x[:, 2] - x[:, 0], 0.5 * x[:, 3]], axis=1)
    return torch.from_numpy(x), torch.from_numpy(score.argmax(1))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(12)
    x_train, y_train = make_data(rng, 96)
    x_test, y_test = make_data(rng, 32)
    model = TabNet(N_FEATURES, N_CLASSES)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    lambda_sparse = 1e-3
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)

    def train_step(X, y):
        optimizer.zero_grad()
        output, M_loss = model(X)[:2]
        loss = F.cross_entropy(output, y)
        loss = loss - lambda_sparse * M_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses, lrs = [], []
    for epoch in range(4):
        model.train()
        for i in range(0, len(x_train), 32):
            losses.append(train_step(x_train[i:i + 32], y_train[i:i + 32]).item())
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])

    model.eval()
    with torch.no_grad():
        logits, m_loss, masks = model(x_test)
        z = torch.tensor([[0.5, -1.0, 2.0, 0.0, 3.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
        sm = sparsemax(z)
    # sparsemax's gradient against finite differences of its forward (in double)
    zd = torch.tensor([[0.3, -0.2, 0.8, 0.1]], dtype=torch.float64, requires_grad=True)
    weights = torch.tensor([[1.0, 2.0, -1.0, 0.5]], dtype=torch.float64)
    (sparsemax(zd) * weights).sum().backward()
    values = {"accuracy": (logits.argmax(1) == y_test).float().mean(), "logits": logits,
              "masks": masks, "mask_rows_sum": masks.sum(-1), "m_loss": m_loss,
              "sparsemax": sm, "sparsemax_grad": zd.grad,
              "lrs": np.array(lrs), "running_mean": model.initial_bn.running_mean.clone()}
    # how many mask entries sparsemax set to exactly zero (a count: not compared to rtol)
    return {"losses": losses, "values": values, "initial_state": initial,
            "mask_zeros": int((masks == 0).sum())}
