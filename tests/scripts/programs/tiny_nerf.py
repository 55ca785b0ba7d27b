"""NeRF-style volume rendering as the nerf-pytorch family writes it, on a synthetic scene (a
coloured ball): rays from a pinhole camera (`torch.meshgrid(..., indexing="xy")`), positional
encoding of points and view directions (sin/cos of powers of two), a coarse and a fine MLP,
stratified samples along each ray (`torch.rand` jitter between the bin edges), volume rendering
with `1 - exp(-relu(sigma) * delta)` alphas and an exclusive `torch.cumprod` transmittance,
hierarchical sampling of the fine points by inverting the coarse weights' CDF with
`torch.searchsorted(cdf, u, right=True)`, `torch.gather` and a safe denominator, and Adam on the
coarse + fine photometric MSE with PSNR logged. The training step is the compiled function."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Embedder:
    def __init__(self, n_freqs):
        self.freq_bands = 2. ** torch.linspace(0., n_freqs - 1, n_freqs)
        self.out_dim = 3 + 3 * 2 * n_freqs

    def __call__(self, x):
        out = [x]
        for freq in self.freq_bands:
            for fn in (torch.sin, torch.cos):
                out.append(fn(x * freq))
        return torch.cat(out, -1)


class NeRF(nn.Module):
    def __init__(self, in_pts, in_views, width=32):
        super().__init__()
        self.pts_linears = nn.ModuleList([nn.Linear(in_pts, width), nn.Linear(width, width)])
        self.alpha_linear = nn.Linear(width, 1)
        self.feature_linear = nn.Linear(width, width)
        self.views_linear = nn.Linear(width + in_views, width // 2)
        self.rgb_linear = nn.Linear(width // 2, 3)

    def forward(self, pts, views):
        h = pts
        for layer in self.pts_linears:
            h = F.relu(layer(h))
        alpha = self.alpha_linear(h)
        h = torch.cat([self.feature_linear(h), views], -1)
        h = F.relu(self.views_linear(h))
        return torch.cat([self.rgb_linear(h), alpha], -1)


def raw2outputs(raw, z_vals, rays_d):
    dists = z_vals[..., 1:] - z_vals[..., :-1]
    dists = torch.cat([dists, torch.tensor([1e10]).expand(dists[..., :1].shape)], -1)
    dists = dists * torch.norm(rays_d[..., None, :], dim=-1)
    rgb = torch.sigmoid(raw[..., :3])
    alpha = 1. - torch.exp(-F.relu(raw[..., 3]) * dists)
    trans = torch.cumprod(torch.cat([torch.ones((alpha.shape[0], 1)), 1. - alpha + 1e-10], -1),
                          -1)[:, :-1]
    weights = alpha * trans
    rgb_map = torch.sum(weights[..., None] * rgb, -2)
    acc_map = torch.sum(weights, -1)
    rgb_map = rgb_map + (1. - acc_map[..., None])       # white background
    return rgb_map, weights


def sample_pdf(bins, weights, n_samples):
    weights = weights + 1e-5
    pdf = weights / torch.sum(weights, -1, keepdim=True)
    cdf = torch.cumsum(pdf, -1)
    cdf = torch.cat([torch.zeros_like(cdf[..., :1]), cdf], -1)
    u = torch.rand(list(cdf.shape[:-1]) + [n_samples]).contiguous()
    inds = torch.searchsorted(cdf, u, right=True)
    below = torch.max(torch.zeros_like(inds - 1), inds - 1)
    above = torch.min((cdf.shape[-1] - 1) * torch.ones_like(inds), inds)
    inds_g = torch.stack([below, above], -1)
    matched_shape = [inds_g.shape[0], inds_g.shape[1], cdf.shape[-1]]
    cdf_g = torch.gather(cdf.unsqueeze(1).expand(matched_shape), 2, inds_g)
    bins_g = torch.gather(bins.unsqueeze(1).expand(matched_shape), 2, inds_g)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    denom = torch.where(denom < 1e-5, torch.ones_like(denom), denom)
    t = (u - cdf_g[..., 0]) / denom
    return bins_g[..., 0] + t * (bins_g[..., 1] - bins_g[..., 0])


def get_rays(H, W, focal, c2w):
    i, j = torch.meshgrid(torch.linspace(0, W - 1, W), torch.linspace(0, H - 1, H),
                          indexing="xy")
    dirs = torch.stack([(i - W * .5) / focal, -(j - H * .5) / focal, -torch.ones_like(i)], -1)
    rays_d = torch.sum(dirs[..., None, :] * c2w[:3, :3], -1)
    rays_o = c2w[:3, -1].expand(rays_d.shape)
    return rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)


def render_ball(rays_o, rays_d):
    """The ground-truth image: a unit ball coloured by its surface normal on white."""
    d = rays_d / rays_d.norm(dim=-1, keepdim=True)
    b = (rays_o * d).sum(-1)
    c = (rays_o * rays_o).sum(-1) - 1.0
    disc = b * b - c
    hit = disc > 0
    t_hit = -b - torch.sqrt(torch.clamp(disc, min=0))
    normal = rays_o + t_hit[:, None] * d
    colour = 0.5 * (normal + 1)
    return torch.where(hit[:, None], colour, torch.ones_like(colour))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    H = W = 12
    focal = 14.0
    angle = 0.4
    c2w = torch.tensor([[math.cos(angle), 0., math.sin(angle), 3.5 * math.sin(angle)],
                        [0., 1., 0., 0.],
                        [-math.sin(angle), 0., math.cos(angle), 3.5 * math.cos(angle)]])
    rays_o, rays_d = get_rays(H, W, focal, c2w)
    target = render_ball(rays_o, rays_d)
    embed_pts, embed_views = Embedder(4), Embedder(2)
    coarse = NeRF(embed_pts.out_dim, embed_views.out_dim)
    fine = NeRF(embed_pts.out_dim, embed_views.out_dim)
    if initial_state is not None:
        coarse.load_state_dict(initial_state["coarse"])
        fine.load_state_dict(initial_state["fine"])
    initial = {"coarse": {k: v.clone() for k, v in coarse.state_dict().items()},
               "fine": {k: v.clone() for k, v in fine.state_dict().items()}}
    params = list(coarse.parameters()) + list(fine.parameters())
    optimizer = torch.optim.Adam(params, lr=5e-3, betas=(0.9, 0.999))
    near, far, n_coarse, n_fine = 2.0, 5.0, 16, 16
    img2mse = lambda x, y: torch.mean((x - y) ** 2)
    mse2psnr = lambda x: -10. * torch.log(x) / torch.log(torch.tensor([10.]))

    def render(model, ro, rd, z_vals):
        pts = ro[..., None, :] + rd[..., None, :] * z_vals[..., :, None]
        viewdirs = rd / torch.norm(rd, dim=-1, keepdim=True)
        views = viewdirs[:, None].expand(pts.shape)
        raw = model(embed_pts(pts.reshape(-1, 3)), embed_views(views.reshape(-1, 3)))
        return raw2outputs(raw.reshape(*pts.shape[:-1], 4), z_vals, rd)

    def train_step(ro, rd, target_s):
        t_vals = torch.linspace(0., 1., steps=n_coarse)
        z_vals = near * (1. - t_vals) + far * t_vals
        z_vals = z_vals.expand([ro.shape[0], n_coarse])
        mids = .5 * (z_vals[..., 1:] + z_vals[..., :-1])
        upper = torch.cat([mids, z_vals[..., -1:]], -1)
        lower = torch.cat([z_vals[..., :1], mids], -1)
        z_vals = lower + (upper - lower) * torch.rand(z_vals.shape)
        rgb0, weights = render(coarse, ro, rd, z_vals)
        z_mid = .5 * (z_vals[..., 1:] + z_vals[..., :-1])
        z_samples = sample_pdf(z_mid, weights[..., 1:-1], n_fine).detach()
        z_all, _ = torch.sort(torch.cat([z_vals, z_samples], -1), -1)
        rgb, _ = render(fine, ro, rd, z_all)
        optimizer.zero_grad()
        img_loss = img2mse(rgb, target_s)
        loss = img_loss + img2mse(rgb0, target_s)
        loss.backward()
        optimizer.step()
        return loss, mse2psnr(img_loss.detach())

    if compile:
        train_step = torch.compile(train_step)
    losses, psnrs = [], []
    for step in range(10):
        select = torch.randperm(H * W)[:48]
        loss, psnr = train_step(rays_o[select], rays_d[select], target[select])
        losses.append(loss.item())
        psnrs.append(psnr.item())
    values = {"psnrs": torch.tensor(psnrs), "target_sum": target.sum(),
              "w_alpha": fine.alpha_linear.weight.detach().clone()}
    return {"losses": losses, "values": values, "initial_state": initial}
