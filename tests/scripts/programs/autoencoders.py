"""Autoencoder tutorial: a linear autoencoder (leaky_relu, sigmoid output, MSELoss, Adam), one
with an adjustable bottleneck, and a convolutional one (strided Conv2d, Flatten, Linear latent,
Unflatten, ConvTranspose2d back to the image), trained on tiny synthetic 12x12 images and
tested on a noisy image under torch.inference_mode."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

SIDE = 12


class AutoencoderLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear_en_1 = nn.Linear(in_features=SIDE * SIDE, out_features=48)
        self.linear_en_2 = nn.Linear(in_features=48, out_features=24)
        self.linear_de_1 = nn.Linear(in_features=24, out_features=48)
        self.linear_de_2 = nn.Linear(in_features=48, out_features=SIDE * SIDE)

    def forward(self, x):
        encode_1 = F.leaky_relu(self.linear_en_1(x))
        encode_2 = F.leaky_relu(self.linear_en_2(encode_1))
        decode_1 = F.leaky_relu(self.linear_de_1(encode_2))
        decode_2 = F.sigmoid(self.linear_de_2(decode_1))
        return decode_2


class AutoencoderLinearA(AutoencoderLinear):
    def __init__(self, compress_nodes):
        super().__init__()
        self.linear_en_c = nn.Linear(in_features=24, out_features=compress_nodes)
        self.linear_de_c = nn.Linear(in_features=compress_nodes, out_features=24)

    def forward(self, x):
        encode_1 = F.leaky_relu(self.linear_en_1(x))
        encode_2 = F.leaky_relu(self.linear_en_2(encode_1))
        decode_c = self.linear_de_c(self.linear_en_c(encode_2))
        decode_1 = F.leaky_relu(self.linear_de_1(decode_c))
        return F.sigmoid(self.linear_de_2(decode_1))


class AutoencoderCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels=1, out_channels=8, kernel_size=(3, 3), stride=2, padding=1),
            nn.LeakyReLU(),
            nn.Conv2d(in_channels=8, out_channels=16, kernel_size=(3, 3), stride=2, padding=1),
            nn.LeakyReLU(),
            nn.Flatten(),
            nn.Linear(16 * 3 * 3, 10),
        )
        self.decoder = nn.Sequential(
            nn.Linear(10, 16 * 3 * 3),
            nn.Unflatten(1, (16, 3, 3)),
            nn.ConvTranspose2d(16, 8, kernel_size=(3, 3), stride=2, padding=1, output_padding=1),
            nn.LeakyReLU(),
            nn.ConvTranspose2d(8, 1, kernel_size=(3, 3), stride=2, padding=1, output_padding=1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return self.decoder(self.encoder(x))


def make_model(model_object, lr_rate=0.01, compress_=None, state=None):
    model_ = model_object() if not compress_ else model_object(compress_)
    if state is not None:
        model_.load_state_dict(state)
    optimizer_ = torch.optim.Adam(model_.parameters(), lr=lr_rate)
    loss_ = nn.MSELoss()
    return model_, optimizer_, loss_


def train_model(model_obj, optimizer_obj, loss_obj, loader_obj, batch_s, epoch_num=1,
                model_linear=True, compile=False):
    def step(batches):
        optimizer_obj.zero_grad()
        logits = model_obj(batches)
        loss = loss_obj(logits, batches)
        loss.backward()
        optimizer_obj.step()
        return loss

    if compile:
        step = torch.compile(step)
    train_loss = []
    for epoch in range(epoch_num):
        for i, data_ in enumerate(loader_obj, 0):
            batches, targets = data_
            if model_linear:
                batches = batches.reshape([batch_s, SIDE * SIDE])
            train_loss.append(step(batches).item())
    return model_obj, train_loss


def add_noise(img_, noise_int, rng):
    noise = rng.normal(loc=0, scale=1, size=img_.shape)
    noisy = np.clip((img_.numpy() + noise * noise_int), 0, 1)
    return torch.tensor(noisy, dtype=torch.float).reshape(1, 1, SIDE, SIDE)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    images = []
    for _ in range(64):          # soft blobs at random places: something to compress
        cy, cx, r = rng.uniform(3, 9), rng.uniform(3, 9), rng.uniform(1.5, 3.5)
        images.append(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))
    images = torch.from_numpy(np.stack(images)[:, None].astype(np.float32))
    loader = DataLoader(TensorDataset(images, torch.zeros(64)), batch_size=16)
    states = initial_state or {}
    losses, values = [], {}
    models = {}
    for name, cls, kwargs, linear in (("linear", AutoencoderLinear, {}, True),
                                      ("compress", AutoencoderLinearA, {"compress_": 4}, True),
                                      ("cnn", AutoencoderCNN, {}, False)):
        model, optimizer, loss_fn = make_model(cls, state=states.get(name), **kwargs)
        models[name] = {k: v.clone() for k, v in model.state_dict().items()}
        model, train_loss = train_model(model, optimizer, loss_fn, loader, 16, epoch_num=3,
                                        model_linear=linear, compile=compile)
        losses += train_loss
        noisy = add_noise(images[0, 0], 0.2, np.random.default_rng(7))
        model.eval()
        with torch.inference_mode():
            output = model(noisy.reshape(SIDE * SIDE) if linear else noisy)
        values[f"{name}_denoised"] = output.reshape(SIDE, SIDE)
        values[f"{name}_no_grad"] = output.requires_grad
    values["noisy"] = noisy
    return {"losses": losses, "values": values, "initial_state": models}


if __name__ == "__main__":
    print(main())
