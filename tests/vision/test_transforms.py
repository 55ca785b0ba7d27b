"""kiln.vision.transforms against what torchvision computes with: Pillow for PIL images, NumPy,
and torch 2.13 ops for tensors (torchvision itself cannot be installed beside the CPU torch)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

import kiln
import kiln.vision.transforms as T
import kiln.vision.transforms.functional as TF


def rgb(h=20, w=30, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8))


def gray(h=9, w=7, seed=1):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w), np.uint8))


def as_torch(x):
    return torch.from_numpy(x.numpy().copy())


def reference_to_tensor(img):
    """torchvision's ToTensor, rebuilt with NumPy and torch ops."""
    array = np.array(img)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


# ---------------------------------------------------------------- conversions

@pytest.mark.parametrize("img", [rgb(), gray(), rgb().convert("RGBA"), rgb().convert("LA")])
def test_to_tensor_matches_torch_ops(img):
    out = T.ToTensor()(img)
    assert out.dtype == kiln.float32
    assert torch.equal(as_torch(out), reference_to_tensor(img))


def test_to_tensor_other_modes_and_arrays():
    ints = Image.fromarray(np.arange(12, dtype=np.int32).reshape(3, 4) * 1000)
    out = T.ToTensor()(ints)
    assert out.dtype == kiln.int32
    np.testing.assert_array_equal(out.numpy()[0], np.arange(12).reshape(3, 4) * 1000)
    floats = Image.fromarray(np.linspace(-1, 3, 12, dtype=np.float32).reshape(3, 4))
    np.testing.assert_array_equal(T.ToTensor()(floats).numpy()[0], np.array(floats))
    bits = gray().convert("1")
    np.testing.assert_array_equal(T.ToTensor()(bits).numpy()[0],
                                  np.array(bits).astype(np.float32))
    hwc = np.random.default_rng(2).integers(0, 256, (5, 6, 3), np.uint8)
    assert torch.equal(as_torch(T.ToTensor()(hwc)),
                       torch.from_numpy(hwc).permute(2, 0, 1).float() / 255)
    floats_hwc = np.random.default_rng(3).normal(size=(5, 6, 2)).astype(np.float64)
    out = T.ToTensor()(floats_hwc)            # not uint8: kept as is, only moved to CHW
    assert out.dtype == kiln.float64
    np.testing.assert_array_equal(out.numpy(), floats_hwc.transpose(2, 0, 1))
    with pytest.raises(TypeError, match="PIL Image or an ndarray"):
        T.ToTensor()(kiln.zeros(3, 4, 4))


def test_pil_to_tensor_and_back():
    img = rgb()
    out = T.PILToTensor()(img)
    assert out.dtype == kiln.uint8
    np.testing.assert_array_equal(out.numpy(), np.array(img).transpose(2, 0, 1))
    back = T.ToPILImage()(out)
    assert back.mode == "RGB"
    np.testing.assert_array_equal(np.array(back), np.array(img))


def test_to_pil_image_scales_float_by_255_and_truncates():
    x = torch.rand(3, 5, 6, generator=torch.Generator().manual_seed(0))
    img = T.ToPILImage()(kiln.tensor(x.numpy()))
    assert img.mode == "RGB" and img.size == (6, 5)
    expected = x.mul(255).byte().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(np.array(img), expected)
    one = T.ToPILImage()(kiln.tensor(x[0].numpy()))
    assert one.mode == "L"
    np.testing.assert_array_equal(np.array(one), expected[:, :, 0])
    as_float = T.ToPILImage(mode="F")(kiln.tensor(x[:1].numpy()))
    assert as_float.mode == "F"
    np.testing.assert_array_equal(np.array(as_float), x[0].numpy())
    assert T.ToPILImage()(kiln.rand(4, 5, 6)).mode == "RGBA"
    with pytest.raises(ValueError, match="> 4 channels"):
        T.ToPILImage()(kiln.zeros(5, 2, 2))


def test_normalize_matches_torch_and_inplace():
    x = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(1))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
    k = kiln.tensor(x.numpy())
    out = T.Normalize(mean, std)(k)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(k.numpy(), x.numpy())         # not in place
    T.Normalize(mean, std, inplace=True)(k)
    np.testing.assert_allclose(k.numpy(), expected.numpy(), rtol=1e-6, atol=1e-7)
    batch = kiln.tensor(x.numpy()).unsqueeze(0).expand(2, 3, 4, 5).clone()
    np.testing.assert_allclose(T.Normalize(mean, std)(batch).numpy()[1], expected.numpy(),
                               rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="std evaluated to zero"):
        T.Normalize((0.5,), (0.0,))(kiln.ones(1, 2, 2))
    with pytest.raises(TypeError, match="float tensor"):
        T.Normalize((0.5,), (0.5,))(kiln.ones(1, 2, 2, dtype=kiln.uint8))


# ---------------------------------------------------------------- resize

def test_resize_pil_matches_pillow():
    img = rgb(20, 30)
    out = T.Resize(10)(img)                          # shorter side 20 -> 10, 30 -> int(15.0)
    assert out.size == (15, 10)
    np.testing.assert_array_equal(np.array(out),
                                  np.array(img.resize((15, 10), Image.Resampling.BILINEAR)))
    tall = rgb(31, 13)
    out = T.Resize(7)(tall)                          # long side int(7 * 31 / 13) = 16
    assert out.size == (7, 16)
    out = T.Resize((8, 9), interpolation=T.InterpolationMode.NEAREST)(img)
    np.testing.assert_array_equal(np.array(out),
                                  np.array(img.resize((9, 8), Image.Resampling.NEAREST)))
    out = T.Resize(10, interpolation=T.InterpolationMode.BICUBIC, max_size=12)(img)
    assert out.size == (12, 8)                        # (15, 10) capped: int(12 * 10 / 15) = 8
    np.testing.assert_array_equal(np.array(out),
                                  np.array(img.resize((12, 8), Image.Resampling.BICUBIC)))
    assert T.Resize(20)(img) is img                   # already the requested size


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("size", [(7, 11), (33, 50), (12, 45)])
def test_resize_tensor_matches_torch_interpolate(mode, antialias, size):
    x = torch.rand(2, 3, 19, 29, generator=torch.Generator().manual_seed(2))
    out = T.Resize(size, interpolation=T.InterpolationMode(mode), antialias=antialias)(
        kiln.tensor(x.numpy()))
    expected = torch.nn.functional.interpolate(x, size=size, mode=mode, align_corners=False,
                                               antialias=antialias)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_resize_tensor_nearest_and_uint8():
    x = torch.randint(0, 256, (3, 10, 14), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(3))
    k = kiln.tensor(x.numpy())
    out = T.Resize(4, interpolation=T.InterpolationMode.NEAREST)(k)
    expected = torch.nn.functional.interpolate(x[None].float(), size=(4, 5), mode="nearest")
    np.testing.assert_array_equal(out.numpy(), expected[0].byte().numpy())
    out = T.Resize(4)(k)                               # uint8 in, uint8 out: rounded
    assert out.dtype == kiln.uint8
    expected = torch.nn.functional.interpolate(x[None].float(), size=(4, 5), mode="bilinear",
                                               antialias=True)[0]
    np.testing.assert_array_equal(out.numpy(), expected.round().byte().numpy())


# ---------------------------------------------------------------- crops and flips

def test_center_crop_pil_and_tensor():
    img = rgb(20, 31)
    out = T.CenterCrop((9, 10))(img)
    top, left = int(round((20 - 9) / 2)), int(round((31 - 10) / 2))
    np.testing.assert_array_equal(np.array(out), np.array(img)[top:top + 9, left:left + 10])
    x = T.ToTensor()(img)
    np.testing.assert_array_equal(T.CenterCrop((9, 10))(x).numpy(),
                                  x.numpy()[:, top:top + 9, left:left + 10])
    big = T.CenterCrop(25)(x)                          # larger than the image: zero padded
    expected = np.pad(x.numpy(), ((0, 0), (2, 3), (0, 0)))
    expected = expected[:, :, 3:28]
    np.testing.assert_array_equal(big.numpy(), expected)
    np.testing.assert_array_equal(np.array(T.CenterCrop(25)(img)),
                                  (expected.transpose(1, 2, 0) * 255).round().astype(np.uint8))


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect", "symmetric"])
def test_pad_modes_pil_and_tensor_match_numpy(mode):
    img = rgb(6, 7)
    padding = (1, 2, 3, 4)                           # left, top, right, bottom
    widths = ((2, 4), (1, 3), (0, 0))
    kwargs = {"constant_values": 9} if mode == "constant" else {}
    expected = np.pad(np.array(img), widths, mode, **kwargs)
    np.testing.assert_array_equal(np.array(T.Pad(padding, fill=9, padding_mode=mode)(img)),
                                  expected)
    x = T.PILToTensor()(img).float()
    out = T.Pad(padding, fill=9, padding_mode=mode)(x)
    np.testing.assert_array_equal(out.numpy(), expected.transpose(2, 0, 1).astype(np.float32))
    two = T.Pad((2, 1), padding_mode=mode)(x)        # (left/right, top/bottom)
    np.testing.assert_array_equal(two.numpy(), np.pad(x.numpy(), ((0, 0), (1, 1), (2, 2)),
                                                      mode))


def test_random_crop_draws_from_kiln_rng_and_pads():
    img = rgb(20, 30)
    x = T.ToTensor()(img)
    crop = T.RandomCrop((8, 12), padding=2)
    kiln.manual_seed(5)
    out_pil = crop(img)
    kiln.manual_seed(5)
    out_tensor = crop(x)
    kiln.manual_seed(5)
    i = kiln.randint(0, 24 - 8 + 1, size=(1,)).item()
    j = kiln.randint(0, 34 - 12 + 1, size=(1,)).item()
    padded = np.pad(np.array(img), ((2, 2), (2, 2), (0, 0)))
    np.testing.assert_array_equal(np.array(out_pil), padded[i:i + 8, j:j + 12])
    np.testing.assert_array_equal(out_tensor.numpy(), np.pad(
        x.numpy(), ((0, 0), (2, 2), (2, 2)))[:, i:i + 8, j:j + 12])
    # pad_if_needed pads each side by the shortfall (as torchvision): 30 x 34, then crops
    kiln.manual_seed(6)
    small = T.RandomCrop((25, 32), pad_if_needed=True, fill=7)(img)
    kiln.manual_seed(6)
    i = kiln.randint(0, 30 - 25 + 1, size=(1,)).item()
    j = kiln.randint(0, 34 - 32 + 1, size=(1,)).item()
    padded = np.pad(np.array(img), ((5, 5), (2, 2), (0, 0)), constant_values=7)
    np.testing.assert_array_equal(np.array(small), padded[i:i + 25, j:j + 32])
    with pytest.raises(ValueError, match="larger than the input image"):
        T.RandomCrop(40)(img)


def test_random_resized_crop_is_a_resized_box():
    img = rgb(24, 32)
    t = T.RandomResizedCrop(10, scale=(0.2, 0.9))
    for seed in range(5):
        kiln.manual_seed(seed)
        i, j, h, w = T.RandomResizedCrop.get_params(img, (0.2, 0.9), (3 / 4, 4 / 3))
        assert 0 <= i <= 24 - h and 0 <= j <= 32 - w
        assert 0.2 * 768 * 0.8 <= h * w <= 0.9 * 768 * 1.2
        kiln.manual_seed(seed)
        out = t(img)
        expected = img.crop((j, i, j + w, i + h)).resize((10, 10), Image.Resampling.BILINEAR)
        np.testing.assert_array_equal(np.array(out), np.array(expected))
    # ratios that cannot fit fall back to the centered box of the closest ratio
    assert T.RandomResizedCrop.get_params(rgb(10, 40), (0.99, 1.0), (1.0, 1.0)) == (0, 15, 10,
                                                                                    10)


def test_flips_with_probability():
    img = rgb(5, 6)
    x = T.ToTensor()(img)
    np.testing.assert_array_equal(np.array(T.RandomHorizontalFlip(1.0)(img)),
                                  np.array(img)[:, ::-1])
    np.testing.assert_array_equal(np.array(T.RandomVerticalFlip(1.0)(img)),
                                  np.array(img)[::-1])
    np.testing.assert_array_equal(T.RandomHorizontalFlip(1.0)(x).numpy(), x.numpy()[:, :, ::-1])
    np.testing.assert_array_equal(T.RandomVerticalFlip(1.0)(x).numpy(), x.numpy()[:, ::-1])
    assert T.RandomHorizontalFlip(0.0)(img) is img
    kiln.manual_seed(11)
    flips = [T.RandomHorizontalFlip()(x) is not x for _ in range(40)]
    kiln.manual_seed(11)
    expected = [kiln.rand(1).item() < 0.5 for _ in range(40)]
    assert flips == expected and 5 < sum(flips) < 35


def test_grayscale_pil_and_tensor():
    img = rgb()
    np.testing.assert_array_equal(np.array(T.Grayscale()(img)), np.array(img.convert("L")))
    three = T.Grayscale(3)(img)
    assert three.mode == "RGB"
    np.testing.assert_array_equal(np.array(three)[:, :, 2], np.array(img.convert("L")))
    x = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(4))
    expected = (0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)
    out = T.Grayscale(3)(kiln.tensor(x.numpy()))
    assert tuple(out.shape) == (3, 4, 5)
    np.testing.assert_allclose(out.numpy(), expected.expand(3, 4, 5).numpy(), rtol=1e-6)


def test_compose_lambda_and_seeded_pipeline():
    pipeline = T.Compose([T.RandomResizedCrop(8), T.RandomHorizontalFlip(),
                          T.ColorJitter(0.4, 0.4, 0.4, 0.1), T.RandomRotation(15),
                          T.ToTensor(), T.Lambda(lambda t: t * 2),
                          T.Normalize((0.5,) * 3, (0.5,) * 3)])
    img = rgb()
    kiln.manual_seed(3)
    first = pipeline(img)
    kiln.manual_seed(3)
    second = pipeline(img)
    assert tuple(first.shape) == (3, 8, 8)
    np.testing.assert_array_equal(first.numpy(), second.numpy())
    assert "RandomResizedCrop" in repr(pipeline)


def test_color_adjustments_match_pillow_and_torch_ops():
    img = rgb()
    for fn, enhancer in [(TF.adjust_brightness, ImageEnhance.Brightness),
                         (TF.adjust_contrast, ImageEnhance.Contrast),
                         (TF.adjust_saturation, ImageEnhance.Color)]:
        np.testing.assert_array_equal(np.array(fn(img, 1.3)), np.array(enhancer(img).enhance(1.3)))
    x = torch.rand(3, 6, 7, generator=torch.Generator().manual_seed(6))
    k = kiln.tensor(x.numpy())
    np.testing.assert_allclose(TF.adjust_brightness(k, 1.4).numpy(),
                               (1.4 * x).clamp(0, 1).numpy(), rtol=1e-6)
    gray_x = 0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    np.testing.assert_allclose(TF.adjust_saturation(k, 0.3).numpy(),
                               (0.3 * x + 0.7 * gray_x).clamp(0, 1).numpy(), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(TF.adjust_contrast(k, 0.6).numpy(),
                               (0.6 * x + 0.4 * gray_x.mean()).clamp(0, 1).numpy(), rtol=1e-5,
                               atol=1e-6)
    # hue: a quarter turn moves pure red's hue by 64 of 256 steps in Pillow's HSV
    red = Image.new("RGB", (2, 2), (255, 0, 0))
    hue = np.array(TF.adjust_hue(red, 0.25).convert("HSV"))[0, 0, 0]
    assert hue == int(0.25 * 255)


def test_random_rotation_is_pillow_rotate_with_the_drawn_angle():
    img = rgb()
    kiln.manual_seed(8)
    out = T.RandomRotation((10, 30), fill=5)(img)
    kiln.manual_seed(8)
    angle = kiln.empty(1).uniform_(10, 30).item()
    assert 10 <= angle <= 30 and not math.isclose(angle, 10)
    expected = img.rotate(angle, Image.Resampling.NEAREST, False, None, fillcolor=(5, 5, 5))
    np.testing.assert_array_equal(np.array(out), np.array(expected))


def test_tensor_transforms_compile_without_graph_breaks():
    """Normalize checks a std given as numbers without reading a tensor, so a model that
    normalizes its input compiles whole; the compiled result equals torch's."""
    from tests.scripts.harness import no_compile_fallback
    pipeline = kiln.nn.Sequential(T.CenterCrop(4), T.Normalize((0.1, 0.2, 0.3), (0.5, 0.6, 0.7)))
    compiled = kiln.compile(pipeline, fullgraph=True)
    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(9))
    expected = (x[:, :, 1:5, 1:5] - torch.tensor([0.1, 0.2, 0.3]).view(-1, 1, 1)) / \
        torch.tensor([0.5, 0.6, 0.7]).view(-1, 1, 1)
    with no_compile_fallback():
        for _ in range(2):
            out = compiled(kiln.tensor(x.numpy()))
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)


def test_image_backend_is_pillow():
    import kiln.vision
    assert kiln.vision.get_image_backend() == "PIL"
    kiln.vision.set_image_backend("PIL")
    with pytest.raises(ValueError, match="Pillow only"):
        kiln.vision.set_image_backend("accimage")


def test_random_containers_draw_from_kiln_rng():
    x = kiln.tensor(np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 24)
    flip = T.Lambda(TF.hflip)                       # draws nothing itself
    kiln.manual_seed(4)
    outs = [T.RandomApply([flip, T.Lambda(lambda t: t * 2)], p=0.5)(x) for _ in range(12)]
    kiln.manual_seed(4)
    applied = [kiln.rand(1).item() <= 0.5 for _ in range(12)]
    assert 0 < sum(applied) < 12
    for out, yes in zip(outs, applied):
        expected = x.numpy()[:, :, ::-1] * 2 if yes else x.numpy()
        np.testing.assert_array_equal(out.numpy(), expected)
    # v1's RandomOrder and RandomChoice draw from Python's random, as torchvision's v1 does
    import random
    from kiln.vision.transforms import v2
    random.seed(5)
    order = list(range(3))
    random.shuffle(order)
    random.seed(5)
    log = []
    T.RandomOrder([T.Lambda(lambda t, k=k: log.append(k) or t) for k in range(3)])(x)
    assert log == order
    add = [T.Lambda(lambda t, k=k: t + k) for k in range(3)]
    random.seed(6)
    picks = [float(T.RandomChoice(add, p=[0.0, 1.0, 3.0])(kiln.zeros(1))) for _ in range(40)]
    random.seed(6)
    expected = [float(random.choices([0, 1, 2], weights=[0.0, 1.0, 3.0])[0]) for _ in range(40)]
    assert picks == expected and set(picks) == {1.0, 2.0}
    # v2's draw from kiln's generator
    kiln.manual_seed(5)
    order = kiln.randperm(3).tolist()
    kiln.manual_seed(5)
    log = []
    v2.RandomOrder([T.Lambda(lambda t, k=k: log.append(k) or t) for k in range(3)])(x)
    assert log == order
    kiln.manual_seed(6)
    picks = [float(v2.RandomChoice(add, p=[0.0, 1.0, 3.0])(kiln.zeros(1))) for _ in range(40)]
    kiln.manual_seed(6)
    expected = [float(kiln.multinomial(kiln.tensor([0.0, 0.25, 0.75]), 1)) for _ in range(40)]
    assert picks == expected and picks.count(2.0) > picks.count(1.0) > 0
    img = rgb()
    assert T.RandomGrayscale(1.0)(img).mode == "RGB"                  # keeps 3 channels
    np.testing.assert_array_equal(np.array(T.RandomGrayscale(1.0)(img))[:, :, 0],
                                  np.array(img.convert("L")))
    assert T.RandomGrayscale(0.0)(img) is img


def test_convert_image_dtype_matches_torchvision_scaling():
    x = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8, generator=torch.Generator()
                      .manual_seed(7))
    out = T.ConvertImageDtype(kiln.float32)(kiln.tensor(x.numpy()))
    np.testing.assert_array_equal(out.numpy(), (x.float() / 255).numpy())
    back = T.ConvertImageDtype(kiln.uint8)(out)
    # torchvision's float -> uint8: scale by 255.999 and truncate, so 1.0 maps to 255
    np.testing.assert_array_equal(back.numpy(), (x.float() / 255).mul(256 - 1e-3).byte().numpy())
    np.testing.assert_array_equal(back.numpy(), x.numpy())


def torch_gaussian_blur(x, ks, sigma):
    """torchvision's tensor blur rebuilt with torch ops: separable normalized Gaussian,
    reflect padding, depthwise conv2d."""
    def k1d(k, s):
        t = torch.linspace(-(k - 1) * 0.5, (k - 1) * 0.5, k, dtype=torch.float64)
        pdf = torch.exp(-0.5 * (t / s) ** 2)
        return pdf / pdf.sum()
    kernel = torch.outer(k1d(ks[1], sigma[1]), k1d(ks[0], sigma[0])).float()
    c = x.shape[-3]
    y = torch.nn.functional.pad(x[None], [ks[0] // 2] * 2 + [ks[1] // 2] * 2, mode="reflect")
    return torch.nn.functional.conv2d(y, kernel.expand(c, 1, *kernel.shape), groups=c)[0]


def test_gaussian_blur_tensor_and_pil():
    x = torch.rand(3, 9, 11, generator=torch.Generator().manual_seed(10))
    out = TF.gaussian_blur(kiln.tensor(x.numpy()), [5, 3], [1.5, 0.7])
    np.testing.assert_allclose(out.numpy(), torch_gaussian_blur(x, [5, 3], [1.5, 0.7]).numpy(),
                               rtol=1e-5, atol=1e-6)
    img = rgb(9, 11)
    blurred = TF.gaussian_blur(img, 3)                       # sigma = 3 * 0.15 + 0.35
    as_float = torch.from_numpy(np.array(img)).permute(2, 0, 1).float()
    expected = torch_gaussian_blur(as_float, [3, 3], [0.8, 0.8]).round().byte()
    assert blurred.mode == "RGB"
    np.testing.assert_array_equal(np.array(blurred), expected.permute(1, 2, 0).numpy())
    kiln.manual_seed(1)
    out = T.GaussianBlur(5, sigma=(0.5, 2.0))(kiln.tensor(x.numpy()))
    kiln.manual_seed(1)
    sigma = kiln.empty(1).uniform_(0.5, 2.0).item()
    np.testing.assert_allclose(out.numpy(), torch_gaussian_blur(x, [5, 5], [sigma, sigma])
                               .numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="odd"):
        T.GaussianBlur(4)


def test_random_erasing_replaces_the_drawn_box():
    x = torch.rand(3, 16, 20, generator=torch.Generator().manual_seed(11))
    k = kiln.tensor(x.numpy())
    for value in (0, (0.1, 0.2, 0.3), "random"):
        kiln.manual_seed(12)
        out = T.RandomErasing(p=1.0, value=value)(k)
        kiln.manual_seed(12)
        kiln.rand(1)                                          # the p draw
        v = None if value == "random" else [float(c) for c in np.atleast_1d(value)]
        i, j, h, w, fill = T.RandomErasing.get_params(k, (0.02, 0.33), (0.3, 3.3), v)
        expected = x.clone()
        expected[:, i:i + h, j:j + w] = torch.from_numpy(fill.numpy())
        np.testing.assert_array_equal(out.numpy(), expected.numpy())
        assert 0 < h * w < 16 * 20 and not np.array_equal(out.numpy(), x.numpy())
    np.testing.assert_array_equal(k.numpy(), x.numpy())       # not in place by default
    assert T.RandomErasing(p=0.0)(k) is k
    with pytest.raises(ValueError, match="1 or 3"):
        T.RandomErasing(p=1.0, value=(1, 2))(k)


def test_adjust_hue_on_tensors_matches_colorsys():
    import colorsys
    x = torch.rand(3, 5, 6, generator=torch.Generator().manual_seed(13))
    x[:, 0, 0] = 0.4                                           # a gray pixel keeps its value
    for factor in (0.3, -0.45):
        out = TF.adjust_hue(kiln.tensor(x.numpy()), factor).numpy()
        a = x.numpy()
        expected = np.zeros_like(a)
        for i in range(5):
            for j in range(6):
                h, s, v = colorsys.rgb_to_hsv(*a[:, i, j])
                expected[:, i, j] = colorsys.hsv_to_rgb((h + factor) % 1.0, s, v)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    jitter = T.ColorJitter(0.3, 0.3, 0.3, 0.2)                 # all four on a tensor
    kiln.manual_seed(14)
    out = jitter(kiln.tensor(x.numpy()))
    kiln.manual_seed(14)
    order, b, c, s, h = T.ColorJitter.get_params(jitter.brightness, jitter.contrast,
                                                 jitter.saturation, jitter.hue)
    expected = kiln.tensor(x.numpy())
    steps = {0: (TF.adjust_brightness, b), 1: (TF.adjust_contrast, c),
             2: (TF.adjust_saturation, s), 3: (TF.adjust_hue, h)}
    for k in order.tolist():
        fn, factor = steps[k]
        expected = fn(expected, factor)
    np.testing.assert_array_equal(out.numpy(), expected.numpy())
    assert sorted(order.tolist()) == [0, 1, 2, 3] and -0.2 <= h <= 0.2


def test_rotate_tensor_matches_pillow_and_torch_affine_grid():
    rng = np.random.default_rng(15)
    square = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
    img = Image.fromarray(square)
    t = T.PILToTensor()(img)
    for angle in (90, 180, -90):                     # exact on a square: the array rotated
        np.testing.assert_array_equal(TF.rotate(t, angle).numpy().transpose(1, 2, 0),
                                      np.rot90(square, angle // 90))
    wide = Image.fromarray(rng.integers(0, 256, (13, 17, 3), dtype=np.uint8))
    t = T.PILToTensor()(wide)
    for angle, expand, center in [(30, False, None), (-47, True, None), (12.5, True, None),
                                  (30, False, (3, 4))]:
        out = TF.rotate(t, angle, expand=expand, center=center, fill=[9, 9, 9])
        expected = np.array(wide.rotate(angle, Image.Resampling.NEAREST, expand, center,
                                        fillcolor=(9, 9, 9)))
        assert out.shape[1:] == expected.shape[:2]
        # nearest sampling rounds a few pixel centers on the other side of a boundary
        assert (out.numpy().transpose(1, 2, 0) != expected).any(-1).mean() < 0.04
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(16))
    angle = 37.0
    rad = np.radians(angle)
    theta = torch.tensor([[[np.cos(rad), -np.sin(rad), 0.0], [np.sin(rad), np.cos(rad), 0.0]]],
                         dtype=torch.float32).expand(2, 2, 3)
    grid = torch.nn.functional.affine_grid(theta, (2, 3, 12, 12), align_corners=False)
    expected = torch.nn.functional.grid_sample(x, grid, mode="bilinear", align_corners=False)
    out = TF.rotate(kiln.tensor(x.numpy()), angle, T.InterpolationMode.BILINEAR)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    kiln.manual_seed(17)
    out = T.RandomRotation(20, interpolation=T.InterpolationMode.BILINEAR)(
        kiln.tensor(x.numpy()))
    kiln.manual_seed(17)
    drawn = T.RandomRotation.get_params([-20.0, 20.0])
    np.testing.assert_allclose(out.numpy(), TF.rotate(kiln.tensor(x.numpy()), drawn,
                                                      T.InterpolationMode.BILINEAR,
                                                      fill=[0.0] * 3).numpy())


def test_v2_pipeline_on_samples():
    from kiln.vision.transforms import v2
    import kiln.vision.transforms.v2.functional as F2
    img = rgb(20, 30)
    pipeline = v2.Compose([v2.ToImage(), v2.RandomResizedCrop(8, antialias=True),
                           v2.RandomHorizontalFlip(), v2.ToDtype(kiln.float32, scale=True),
                           v2.Normalize([0.5] * 3, [0.25] * 3)])
    kiln.manual_seed(18)
    alone = pipeline(img)
    kiln.manual_seed(18)
    image, label = pipeline(img, 7)                          # (image, label): label kept
    kiln.manual_seed(18)
    sample = pipeline({"image": img, "label": 7, "name": "x"})
    assert label == 7 and sample["label"] == 7 and sample["name"] == "x"
    np.testing.assert_array_equal(image.numpy(), alone.numpy())
    np.testing.assert_array_equal(sample["image"].numpy(), alone.numpy())
    # the v1 route gives the same pixels: crop and flip the PIL image, then ToTensor
    kiln.manual_seed(18)
    v1 = T.Compose([T.PILToTensor(), T.RandomResizedCrop(8), T.RandomHorizontalFlip(),
                    T.ConvertImageDtype(kiln.float32), T.Normalize([0.5] * 3, [0.25] * 3)])
    np.testing.assert_array_equal(v1(img).numpy(), alone.numpy())
    as_uint8 = F2.to_image(img)
    assert as_uint8.dtype == kiln.uint8
    np.testing.assert_array_equal(as_uint8.numpy(), np.array(img).transpose(2, 0, 1))
    scaled = F2.to_dtype(as_uint8, kiln.float32, scale=True)
    np.testing.assert_array_equal(scaled.numpy(), reference_to_tensor(img).numpy())
    assert F2.hflip is TF.hflip
    with pytest.raises(NotImplementedError, match="one image per sample"):
        v2.RandomHorizontalFlip()(img, img)



def test_random_parameters_equal_torchvisions_draws_under_the_same_seed():
    """kiln's generator gives torch's streams, so every random transform draws the numbers
    torchvision draws (its get_params rebuilt with torch calls), so the same seed gives the same
    crops, flips, angles and jitter factors."""
    img = rgb(24, 32)

    def torch_resized_crop(height, width, scale, ratio):
        area = height * width
        log_ratio = torch.log(torch.tensor(ratio))
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
            aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                i = torch.randint(0, height - h + 1, size=(1,)).item()
                j = torch.randint(0, width - w + 1, size=(1,)).item()
                return i, j, h, w
        raise AssertionError("no fit in 10 tries")

    for seed in range(6):
        kiln.manual_seed(seed)
        torch.manual_seed(seed)
        assert T.RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3)) == \
            torch_resized_crop(24, 32, (0.08, 1.0), (3 / 4, 4 / 3))
        assert T.RandomCrop.get_params(img, (10, 12)) == (
            torch.randint(0, 15, size=(1,)).item(), torch.randint(0, 21, size=(1,)).item(),
            10, 12)
        assert (T.RandomHorizontalFlip()(img) is not img) == bool(torch.rand(1) < 0.5)
        order, b, c, s, h = T.ColorJitter.get_params([0.6, 1.4], [0.6, 1.4], None, [-0.1, 0.1])
        assert order.tolist() == torch.randperm(4).tolist()
        assert b == float(torch.empty(1).uniform_(0.6, 1.4))
        assert c == float(torch.empty(1).uniform_(0.6, 1.4)) and s is None
        assert h == float(torch.empty(1).uniform_(-0.1, 0.1))
        assert T.RandomRotation.get_params([-30.0, 30.0]) == \
            float(torch.empty(1).uniform_(-30.0, 30.0).item())
    # FakeData's items: torchvision seeds index + offset, draws randn, then the target
    from kiln.vision import datasets
    item, target = datasets.FakeData(size=4, image_size=(3, 5, 6), random_offset=7)[2]
    torch.manual_seed(9)
    noise = torch.randn(3, 5, 6)
    assert target == torch.randint(0, 10, size=(1,), dtype=torch.long)[0].item()
    inside = ((noise >= 0) & (noise < 1)).permute(1, 2, 0).numpy()
    expected = noise.mul(255).clamp(0, 255).byte().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(np.array(item)[inside], expected[inside])


def test_to_pil_image_explicit_modes():
    x = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8, generator=torch.Generator()
                      .manual_seed(19))
    k = kiln.tensor(x.numpy())
    for mode in ("RGB", "HSV", "YCbCr"):
        img = T.ToPILImage(mode=mode)(k)
        assert img.mode == mode
        np.testing.assert_array_equal(np.array(img), x.permute(1, 2, 0).numpy())
    two = T.ToPILImage()(kiln.tensor(x[:2].numpy()))
    assert two.mode == "LA"
    np.testing.assert_array_equal(np.array(two), x[:2].permute(1, 2, 0).numpy())
    hwc = x.permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(np.array(T.ToPILImage()(hwc)), hwc)     # ndarray, HWC
    with pytest.raises(ValueError, match="only modes"):
        T.ToPILImage(mode="RGBA")(k)
    with pytest.raises(ValueError, match="incorrect mode"):
        T.ToPILImage(mode="RGB")(kiln.tensor(x[:1].numpy()))


def test_resize_tensor_nearest_exact_matches_torch():
    x = torch.rand(1, 2, 7, 9, generator=torch.Generator().manual_seed(20))
    out = T.Resize((5, 13), interpolation=T.InterpolationMode.NEAREST_EXACT)(
        kiln.tensor(x.numpy()))
    expected = torch.nn.functional.interpolate(x, size=(5, 13), mode="nearest-exact")
    np.testing.assert_array_equal(out.numpy(), expected.numpy())
