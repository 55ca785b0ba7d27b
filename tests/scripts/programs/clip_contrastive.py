"""CLIP-style contrastive training (open_clip / the CLIP paper's pseudocode): an image encoder
(a small CNN) and a text encoder (embeddings, token mixing, an MLP, the end token's features),
both projected and `F.normalize`d, a learnable temperature `logit_scale =
nn.Parameter(torch.ones([]) * np.log(1 / 0.07))` used as `logit_scale.exp()`, the symmetric
cross entropy over `torch.arange` labels, and the scale clamped in place after each optimizer
step as open_clip does. Zero-shot accuracy by argmax over the similarity matrix at the end. The
model is compiled with `torch.compile(model)`; the loss, optimizer step and clamp stay eager."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class ImageEncoder(nn.Module):
    def __init__(self, embed_dim):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.ln = nn.LayerNorm(64)
        self.proj = nn.Parameter(torch.randn(64, embed_dim) * 64 ** -0.5)

    def forward(self, x):
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        x = self.pool(x).flatten(1)
        return self.ln(x) @ self.proj


class TextEncoder(nn.Module):
    def __init__(self, vocab, embed_dim, width=16, context=5):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.empty(context, width))
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.token_mix = nn.Linear(context, context)        # an MLP-Mixer style token mixing
        self.mlp = nn.Sequential(nn.Linear(width, width * 2), nn.GELU(),
                                 nn.Linear(width * 2, width))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    def forward(self, text):
        x = self.token_embedding(text) + self.positional_embedding
        x = x + self.token_mix(x.transpose(1, 2)).transpose(1, 2)
        x = x + self.mlp(x)
        x = self.ln_final(x)
        # the end-of-text token is the one with the highest id, as CLIP's tokenizer makes it
        x = x[torch.arange(x.shape[0]), text.argmax(dim=-1)]
        return x @ self.text_projection


class CLIP(nn.Module):
    def __init__(self, vocab=18, embed_dim=8):
        super().__init__()
        self.visual = ImageEncoder(embed_dim)
        self.text = TextEncoder(vocab, embed_dim)
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))

    def encode_image(self, image, normalize=False):
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text, normalize=False):
        features = self.text(text)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, image, text):
        image_features = self.encode_image(image, normalize=True)
        text_features = self.encode_text(text, normalize=True)
        return image_features, text_features, self.logit_scale.exp()


class ClipLoss(nn.Module):
    def forward(self, image_features, text_features, logit_scale):
        logits_per_image = logit_scale * image_features @ text_features.T
        logits_per_text = logit_scale * text_features @ image_features.T
        labels = torch.arange(logits_per_image.shape[0], device=image_features.device,
                              dtype=torch.long)
        return (F.cross_entropy(logits_per_image, labels) +
                F.cross_entropy(logits_per_text, labels)) / 2


def make_pairs(rng, batches):
    """Colour-coded images and their 'captions', each batch one of every class: class c paints
    channel c % 3 in quadrant c // 3, and its caption is [c + 1, noise, noise, noise, 17] (17
    the end token)."""
    classes = np.concatenate([rng.permutation(12) for _ in range(batches)])
    n = len(classes)
    images = 0.1 * rng.normal(size=(n, 3, 8, 8)).astype(np.float32)
    for i, c in enumerate(classes):
        r, q = c % 3, c // 3
        images[i, r, 4 * (q // 2):4 * (q // 2) + 4, 4 * (q % 2):4 * (q % 2) + 4] += 1.0
    text = rng.integers(13, 17, (n, 5))
    text[:, 0] = classes + 1
    text[:, 4] = 17
    return torch.from_numpy(images), torch.from_numpy(text), classes


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(11)
    images, texts, _ = make_pairs(rng, 8)
    model = CLIP()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    exclude = lambda n, p: p.ndim < 2 or "ln" in n      # noqa: E731
    named = [(n, p) for n, p in model.named_parameters() if n != "logit_scale"]
    gain_or_bias = [p for n, p in named if exclude(n, p) and p.requires_grad]
    rest = [p for n, p in named if not exclude(n, p) and p.requires_grad]
    # the temperature learns fast here, so that the clamp at log(100) is reached
    optimizer = torch.optim.AdamW([{"params": gain_or_bias, "weight_decay": 0.0},
                                   {"params": rest, "weight_decay": 0.2},
                                   {"params": [model.logit_scale], "weight_decay": 0.0,
                                    "lr": 0.1}],
                                  lr=1e-2, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    max_logit_scale = 9       # open_clip's is 100; this short run reaches 9
    forward = torch.compile(model) if compile else model
    losses, scales = [], []
    for epoch in range(3):
        for i in range(0, 96, 12):
            image_features, text_features, logit_scale = forward(images[i:i + 12],
                                                                 texts[i:i + 12])
            total_loss = loss_fn(image_features, text_features, logit_scale)
            optimizer.zero_grad()
            total_loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(max_logit_scale))
            losses.append(total_loss.item())
            scales.append(logit_scale.item())

    test_images, test_texts, test_classes = make_pairs(np.random.default_rng(12), 1)
    prompts = torch.tensor([[c + 1, 13, 14, 15, 17] for c in range(12)])
    model.eval()
    with torch.no_grad():
        image_features = model.encode_image(test_images, normalize=True)
        text_features = model.encode_text(prompts, normalize=True)
        text_probs = (100.0 * image_features @ text_features.T).softmax(dim=-1)
    values = {"logit_scale": model.logit_scale.detach().clone(),
              "scales": torch.tensor(scales),
              "text_probs": text_probs,
              "zero_shot_correct": int((text_probs.argmax(-1).numpy() == test_classes).sum()),
              "proj": model.visual.proj.detach().clone()}
    return {"losses": losses, "values": values, "initial_state": initial}
