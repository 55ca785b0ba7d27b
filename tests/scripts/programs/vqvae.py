"""A VQ-VAE as the popular reference implementations write it: a conv encoder, a vector
quantizer that flattens `(B, C, H, W)` to vectors, finds the nearest codebook entry by `argmin`
of `||z||^2 + ||e||^2 - 2 z.e`, looks it up with `F.embedding`, passes gradients straight
through (`z + (q - z).detach()`) and adds the commitment loss; the codebook is updated by an
exponential moving average (counts from one-hot rows, sums by `index_add_`, Laplace
smoothing), dead codes are restarted at random encoder outputs by `codebook.data =
torch.where(...)`, the perplexity comes from one-hot rows built by `scatter_add_`, and the
codebook usage after training by `bincount`. The training step is the compiled function.
In float64: which code is nearest must not hinge on float32 rounding, which differs between
BLAS builds and CPUs (an AVX2 machine's matmul moved one vector to another code)."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class VectorQuantizerEMA(nn.Module):
    def __init__(self, num_embeddings, embedding_dim, commitment_cost=0.25, decay=0.9,
                 epsilon=1e-5):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.commitment_cost = commitment_cost
        self.decay = decay
        self.epsilon = epsilon
        self.register_buffer("embedding", torch.randn(num_embeddings, embedding_dim))
        self.register_buffer("ema_cluster_size", torch.zeros(num_embeddings))
        self.register_buffer("ema_w", self.embedding.clone())

    def forward(self, inputs):
        z = inputs.permute(0, 2, 3, 1).contiguous()
        flat = z.view(-1, self.embedding_dim)
        distances = (torch.sum(flat ** 2, dim=1, keepdim=True)
                     + torch.sum(self.embedding ** 2, dim=1)
                     - 2 * torch.matmul(flat, self.embedding.t()))
        indices = torch.argmin(distances, dim=1)
        quantized = F.embedding(indices, self.embedding).view(z.shape)

        if self.training:
            with torch.no_grad():
                encodings = F.one_hot(indices, self.num_embeddings).float()
                counts = encodings.sum(0)
                self.ema_cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
                n = self.ema_cluster_size.sum()
                self.ema_cluster_size.copy_((self.ema_cluster_size + self.epsilon)
                                            / (n + self.num_embeddings * self.epsilon) * n)
                dw = torch.zeros_like(self.ema_w).index_add_(0, indices, flat)
                self.ema_w.mul_(self.decay).add_(dw, alpha=1 - self.decay)
                self.embedding.copy_(self.ema_w / self.ema_cluster_size.unsqueeze(1))
                # restart codes nobody used at random encoder outputs
                dead = counts == 0
                pick = torch.randint(0, flat.shape[0], (self.num_embeddings,))
                self.embedding.data = torch.where(dead[:, None], flat[pick], self.embedding)
                self.ema_w.copy_(torch.where(dead[:, None], flat[pick], self.ema_w))

        e_latent_loss = F.mse_loss(quantized.detach(), z)
        loss = self.commitment_cost * e_latent_loss
        quantized = z + (quantized - z).detach()
        one_hot = torch.zeros(indices.shape[0], self.num_embeddings)
        one_hot.scatter_add_(1, indices.unsqueeze(1), torch.ones(indices.shape[0], 1))
        avg_probs = one_hot.mean(0)
        perplexity = torch.exp(-torch.sum(avg_probs * torch.log(avg_probs + 1e-10)))
        return loss, quantized.permute(0, 3, 1, 2).contiguous(), perplexity, indices


class VQVAE(nn.Module):
    def __init__(self, hidden=16, num_embeddings=16, embedding_dim=4):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, hidden, 4, stride=2, padding=1), nn.ReLU(),
                                     nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(hidden, embedding_dim, 1))
        self.vq = VectorQuantizerEMA(num_embeddings, embedding_dim)
        self.decoder = nn.Sequential(nn.Conv2d(embedding_dim, hidden, 3, padding=1), nn.ReLU(),
                                     nn.ConvTranspose2d(hidden, 1, 4, stride=2, padding=1))

    def forward(self, x):
        z = self.encoder(x)
        vq_loss, quantized, perplexity, indices = self.vq(z)
        return vq_loss, self.decoder(quantized), perplexity, indices


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(2)
    images = np.zeros((64, 1, 8, 8), dtype=np.float64)
    for i in range(64):
        r, c = rng.integers(0, 5, 2)
        images[i, 0, r:r + 3, c:c + 3] = 1.0
    data = torch.from_numpy(images)
    data_variance = data.var().item()

    model = VQVAE().double()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, amsgrad=False)

    def train_step(x):
        optimizer.zero_grad()
        vq_loss, recon, perplexity, _ = model(x)
        recon_error = F.mse_loss(recon, x) / data_variance
        loss = recon_error + vq_loss
        loss.backward()
        optimizer.step()
        return loss, perplexity

    if compile:
        train_step = torch.compile(train_step)
    losses, perplexities = [], []
    model.train()
    for epoch in range(2):
        for x in data.split(16):
            loss, perplexity = train_step(x)
            losses.append(loss.item())
            perplexities.append(perplexity.item())
    model.eval()
    with torch.no_grad():
        _, recon, _, codes = model(data[:4])
        _, _, _, all_codes = model(data)
        usage = torch.bincount(all_codes, minlength=16)
    values = {"usage": usage,"codebook": model.vq.embedding.clone(),
              "cluster_size": model.vq.ema_cluster_size.clone(),
              "enc_w": model.encoder[0].weight.detach().clone(),
              "perplexities": torch.tensor(perplexities), "codes": codes, "recon": recon}
    return {"losses": losses, "values": values, "initial_state": initial}
