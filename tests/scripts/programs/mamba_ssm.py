"""A Mamba-style selective state-space block as the minimal reimplementations write it
(mamba-minimal style): an input projection split into the SSM branch and a gate, a depthwise
causal Conv1d (`padding=d_conv - 1`, then the first `L` outputs kept), input-dependent
`dt`, `B`, `C` from one Linear (`split`), `dt` through a low-rank projection and `softplus`,
`A = -exp(A_log)`, the discretisation `exp(dt * A)`, the selective scan as a Python loop over
time, and the same scan in log space by `cumsum` (checked equal), `D` skip, SiLU gate, RMSNorm,
residual blocks; and mamba_simple's recurrent `step` (conv and SSM states updated in place)
giving the parallel forward's logits. A next-token task on a small sequence; the train step and
the recurrent step are compiled."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def selective_scan(u, delta, A, B, C, D):
    """The recurrence h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, y_t = C_t h_t, by a loop."""
    b, l, d_in = u.shape
    n = A.shape[1]
    deltaA = torch.exp(torch.einsum("bld,dn->bldn", delta, A))
    deltaB_u = torch.einsum("bld,bln,bld->bldn", delta, B, u)
    x = torch.zeros((b, d_in, n), device=deltaA.device)
    ys = []
    for i in range(l):
        x = deltaA[:, i] * x + deltaB_u[:, i]
        y = torch.einsum("bdn,bn->bd", x, C[:, i, :])
        ys.append(y)
    y = torch.stack(ys, dim=1)
    return y + u * D


def selective_scan_cumsum(u, delta, A, B, C, D):
    """The same recurrence in closed form: h_t = sum_s exp(sum_{s<r<=t} delta_r A) dB_s u_s,
    with the decays from a cumulative sum of `delta * A` (a log-space scan)."""
    dA = torch.einsum("bld,dn->bldn", delta, A)                 # log of the per-step decay
    cum = torch.cumsum(dA, dim=1)                               # (b, l, d, n)
    deltaB_u = torch.einsum("bld,bln,bld->bldn", delta, B, u)
    # decay from step s to step t: exp(cum_t - cum_s), only for s <= t
    diff = cum.unsqueeze(2) - cum.unsqueeze(1)                  # (b, t, s, d, n)
    l = u.shape[1]
    causal = torch.tril(torch.ones(l, l, dtype=torch.bool, device=u.device))
    diff = diff.masked_fill(~causal[None, :, :, None, None], float("-inf"))
    h = torch.einsum("btsdn,bsdn->btdn", torch.exp(diff), deltaB_u)
    y = torch.einsum("btdn,btn->btd", h, C)
    return y + u * D


class MambaBlock(nn.Module):
    def __init__(self, d_model, d_state=4, expand=2, d_conv=4, dt_rank=None, scan="loop"):
        super().__init__()
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.d_state = d_state
        self.scan = scan
        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, bias=True,
                                groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + d_state * 2, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, x):
        b, l, d = x.shape
        x_and_res = self.in_proj(x)
        x, res = x_and_res.split(split_size=[self.d_inner, self.d_inner], dim=-1)
        x = x.transpose(1, 2)                       # (b, d_inner, l) for the conv
        x = self.conv1d(x)[:, :, :l]
        x = x.transpose(1, 2)
        x = F.silu(x)
        y = self.ssm(x)
        y = y * F.silu(res)
        return self.out_proj(y)

    def ssm(self, x):
        A = -torch.exp(self.A_log.float())
        D = self.D.float()
        x_dbl = self.x_proj(x)
        delta, B, C = x_dbl.split(split_size=[self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(delta))
        if self.scan == "loop":
            return selective_scan(x, delta, A, B, C, D)
        return selective_scan_cumsum(x, delta, A, B, C, D)


    def step(self, x, conv_state, ssm_state):
        """One token of recurrent inference, as mamba_simple's step: the conv state rolled and
        its last column written, the SSM state updated in place (copy_)."""
        xz = self.in_proj(x)                                  # (b, 2 * d_inner)
        x, z = xz.chunk(2, dim=-1)
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = x
        x = torch.sum(conv_state * self.conv1d.weight.squeeze(1), dim=-1) + self.conv1d.bias
        x = F.silu(x)
        x_db = self.x_proj(x)
        dt, B, C = torch.split(x_db, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))
        A = -torch.exp(self.A_log.float())
        dA = torch.exp(torch.einsum("bd,dn->bdn", dt, A))
        dB = torch.einsum("bd,bn->bdn", dt, B)
        ssm_state.copy_(ssm_state * dA + x.unsqueeze(-1) * dB)
        y = torch.einsum("bdn,bn->bd", ssm_state, C)
        y = y + self.D * x
        y = y * F.silu(z)
        return self.out_proj(y)


class ResidualBlock(nn.Module):
    def __init__(self, d_model, **kw):
        super().__init__()
        self.mixer = MambaBlock(d_model, **kw)
        self.norm = RMSNorm(d_model)

    def forward(self, x):
        return self.mixer(self.norm(x)) + x

    def step(self, x, conv_state, ssm_state):
        return self.mixer.step(self.norm(x), conv_state, ssm_state) + x


class Mamba(nn.Module):
    def __init__(self, vocab, d_model=16, n_layer=2, **kw):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d_model)
        self.layers = nn.ModuleList([ResidualBlock(d_model, **kw) for _ in range(n_layer)])
        self.norm_f = RMSNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab, bias=False)
        self.lm_head.weight = self.embedding.weight            # tied, as the reference does

    def forward(self, ids):
        x = self.embedding(ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm_f(x))

    def step(self, token, states):
        x = self.embedding(token)
        for layer, (conv_state, ssm_state) in zip(self.layers, states):
            x = layer.step(x, conv_state, ssm_state)
        return self.lm_head(self.norm_f(x))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    vocab, seq = 11, 12
    rng = np.random.default_rng(3)
    # a copy task with an offset: token t+1 is token t-2 plus one, mod vocab
    data = rng.integers(0, vocab, size=(48, seq + 1))
    for t in range(3, seq + 1):
        data[:, t] = (data[:, t - 3] + 1) % vocab
    data = torch.from_numpy(data)

    model = Mamba(vocab, d_model=16, n_layer=2, d_state=4)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)

    def train_step(inp, tgt):
        logits = model(inp)
        loss = F.cross_entropy(logits.reshape(-1, vocab), tgt.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for epoch in range(3):
        for batch in data.split(16):
            losses.append(train_step(batch[:, :-1], batch[:, 1:]).item())

    model.eval()
    with torch.no_grad():
        probe = data[:4, :-1]
        loop_logits = model(probe)
        for layer in model.layers:
            layer.mixer.scan = "cumsum"
        cumsum_logits = model(probe)
        for layer in model.layers:
            layer.mixer.scan = "loop"
    # recurrent inference one token at a time, its states in place: the parallel logits
    step = torch.compile(model.step) if compile else model.step
    states = [(torch.zeros(4, m.mixer.d_inner, m.mixer.conv1d.kernel_size[0]),
               torch.zeros(4, m.mixer.d_inner, m.mixer.d_state)) for m in model.layers]
    with torch.no_grad():
        step_logits = torch.stack([step(probe[:, t], states) for t in range(probe.shape[1])], 1)
    # the gradients of the two scans agree too
    x = torch.randn(2, 5, 32, requires_grad=True)
    mixer = model.layers[0].mixer
    g = []
    for scan in ("loop", "cumsum"):
        mixer.scan = scan
        gx, = torch.autograd.grad(mixer.ssm(x).square().sum(), x)
        g.append(gx)
    mixer.scan = "loop"
    values = {"loop_logits": loop_logits, "cumsum_logits": cumsum_logits,
              "step_logits": step_logits, "ssm_state": states[1][1],
              "scans_agree": bool(torch.allclose(loop_logits, cumsum_logits, atol=1e-5)),
              "grad_loop": g[0], "grad_cumsum": g[1],
              "A": -torch.exp(model.layers[1].mixer.A_log.detach()),
              "accuracy": (loop_logits.argmax(-1)[:, 3:] == data[:4, 4:]).float().mean()}
    return {"losses": losses, "values": values, "initial_state": initial}
