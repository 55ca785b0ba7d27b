"""pytorch/examples fast_neural_style's training on small synthetic images: a TransformerNet of
reflection-padded convs, affine InstanceNorm2d, residual blocks and nearest-upsampling convs;
a frozen VGG-like feature extractor (its own small random weights instead of torchvision's)
returning a namedtuple of slices; normalize_batch with new_tensor and an in-place div_;
gram matrices by bmm; content and style MSE losses; Adam; the model saved with eval() + cpu()
state_dict and stylizing with it under no_grad."""
import io
from collections import namedtuple

import numpy as np
import torch
from torch.optim import Adam


class TransformerNet(torch.nn.Module):
    def __init__(self):
        super(TransformerNet, self).__init__()
        self.conv1 = ConvLayer(3, 8, kernel_size=5, stride=1)
        self.in1 = torch.nn.InstanceNorm2d(8, affine=True)
        self.conv2 = ConvLayer(8, 16, kernel_size=3, stride=2)
        self.in2 = torch.nn.InstanceNorm2d(16, affine=True)
        self.res1 = ResidualBlock(16)
        self.res2 = ResidualBlock(16)
        self.deconv1 = UpsampleConvLayer(16, 8, kernel_size=3, stride=1, upsample=2)
        self.in3 = torch.nn.InstanceNorm2d(8, affine=True)
        self.deconv2 = ConvLayer(8, 3, kernel_size=5, stride=1)
        self.relu = torch.nn.ReLU()

    def forward(self, X):
        y = self.relu(self.in1(self.conv1(X)))
        y = self.relu(self.in2(self.conv2(y)))
        y = self.res1(y)
        y = self.res2(y)
        y = self.relu(self.in3(self.deconv1(y)))
        return self.deconv2(y)


class ConvLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride):
        super(ConvLayer, self).__init__()
        reflection_padding = kernel_size // 2
        self.reflection_pad = torch.nn.ReflectionPad2d(reflection_padding)
        self.conv2d = torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x):
        return self.conv2d(self.reflection_pad(x))


class ResidualBlock(torch.nn.Module):
    def __init__(self, channels):
        super(ResidualBlock, self).__init__()
        self.conv1 = ConvLayer(channels, channels, kernel_size=3, stride=1)
        self.in1 = torch.nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = ConvLayer(channels, channels, kernel_size=3, stride=1)
        self.in2 = torch.nn.InstanceNorm2d(channels, affine=True)
        self.relu = torch.nn.ReLU()

    def forward(self, x):
        residual = x
        out = self.relu(self.in1(self.conv1(x)))
        out = self.in2(self.conv2(out))
        return out + residual


class UpsampleConvLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride, upsample=None):
        super(UpsampleConvLayer, self).__init__()
        self.upsample = upsample
        reflection_padding = kernel_size // 2
        self.reflection_pad = torch.nn.ReflectionPad2d(reflection_padding)
        self.conv2d = torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x):
        x_in = x
        if self.upsample:
            x_in = torch.nn.functional.interpolate(x_in, mode='nearest', scale_factor=self.upsample)
        return self.conv2d(self.reflection_pad(x_in))


class Vgg(torch.nn.Module):
    """VGG16's slicing pattern over a small frozen conv stack."""

    def __init__(self, requires_grad=False):
        super(Vgg, self).__init__()
        features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(inplace=True),
            torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(inplace=True),
            torch.nn.MaxPool2d(2, 2),
            torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(inplace=True))
        self.slice1 = torch.nn.Sequential()
        self.slice2 = torch.nn.Sequential()
        for x in range(4):
            self.slice1.add_module(str(x), features[x])
        for x in range(4, 7):
            self.slice2.add_module(str(x), features[x])
        if not requires_grad:
            for param in self.parameters():
                param.requires_grad = False

    def forward(self, X):
        h = self.slice1(X)
        h_relu1_2 = h
        h = self.slice2(h)
        h_relu2_2 = h
        vgg_outputs = namedtuple("VggOutputs", ['relu1_2', 'relu2_2'])
        return vgg_outputs(h_relu1_2, h_relu2_2)


def gram_matrix(y):
    (b, ch, h, w) = y.size()
    features = y.view(b, ch, w * h)
    features_t = features.transpose(1, 2)
    gram = features.bmm(features_t) / (ch * h * w)
    return gram


def normalize_batch(batch):
    mean = batch.new_tensor([0.485, 0.456, 0.406]).view(-1, 1, 1)
    std = batch.new_tensor([0.229, 0.224, 0.225]).view(-1, 1, 1)
    batch = batch.div_(255.0)
    return (batch - mean) / std


def main(seed=0, compile=False, initial_state=None, epochs=2):
    torch.manual_seed(seed)
    rng = np.random.default_rng(3)
    images = torch.tensor(rng.random((8, 3, 16, 16)) * 255, dtype=torch.float32)
    train_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images),
                                               batch_size=4, shuffle=False)
    transformer = TransformerNet()
    vgg = Vgg(requires_grad=False)
    if initial_state is not None:
        transformer.load_state_dict(initial_state["transformer"])
        vgg.load_state_dict(initial_state["vgg"])
    initial = {"transformer": {k: v.clone() for k, v in transformer.state_dict().items()},
               "vgg": {k: v.clone() for k, v in vgg.state_dict().items()}}
    optimizer = Adam(transformer.parameters(), 1e-3)
    mse_loss = torch.nn.MSELoss()
    content_weight, style_weight = 1e5, 1e10

    style = torch.tensor(rng.random((1, 3, 16, 16)) * 255, dtype=torch.float32)
    style = style.repeat(4, 1, 1, 1)
    features_style = vgg(normalize_batch(style))
    gram_style = [gram_matrix(y) for y in features_style]

    def train_step(x):
        n_batch = len(x)
        optimizer.zero_grad()
        y = transformer(x)
        y = normalize_batch(y)
        x = normalize_batch(x)
        features_y = vgg(y)
        features_x = vgg(x)
        content_loss = content_weight * mse_loss(features_y.relu2_2, features_x.relu2_2)
        style_loss = 0.
        for ft_y, gm_s in zip(features_y, gram_style):
            gm_y = gram_matrix(ft_y)
            style_loss += mse_loss(gm_y, gm_s[:n_batch, :, :])
        style_loss *= style_weight
        total_loss = content_loss + style_loss
        total_loss.backward()
        optimizer.step()
        return content_loss, style_loss

    if compile:
        train_step = torch.compile(train_step)
    losses = []
    for e in range(epochs):
        transformer.train()
        agg_content_loss = 0.
        agg_style_loss = 0.
        for batch_id, (x,) in enumerate(train_loader):
            content_loss, style_loss = train_step(x.clone())
            agg_content_loss += content_loss.item()
            agg_style_loss += style_loss.item()
            losses.append(content_loss.item() + style_loss.item())

    transformer.eval().cpu()
    buffer = io.BytesIO()
    torch.save(transformer.state_dict(), buffer)
    buffer.seek(0)
    style_model = TransformerNet()
    state_dict = torch.load(buffer)
    style_model.load_state_dict(state_dict)
    with torch.no_grad():
        output = style_model(images[:2]).cpu()
    img = output[0].clone().clamp(0, 255).numpy()
    img = img.transpose(1, 2, 0).astype("uint8")
    return {"losses": losses, "initial_state": initial, "stylized": output,
            "image_sum": int(img.astype(np.int64).sum())}


if __name__ == "__main__":
    print(main()["losses"])
