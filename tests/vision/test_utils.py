"""make_grid and save_image against the grid rebuilt with torch ops and NumPy."""

import numpy as np
import pytest
import torch
from PIL import Image

import kiln
from kiln.vision.utils import make_grid, save_image


def reference_grid(batch, nrow=8, padding=2, pad_value=0.0):
    """torchvision's layout: `nrow` images a row, `padding` pixels before each and at the end."""
    b, c, h, w = batch.shape
    if c == 1:
        batch = torch.cat([batch] * 3, 1)
        c = 3
    if b == 1:
        return batch[0]
    cols = min(nrow, b)
    rows = -(-b // cols)
    grid = torch.full((c, rows * (h + padding) + padding, cols * (w + padding) + padding),
                      float(pad_value))
    for k in range(b):
        y, x = divmod(k, cols)
        top, left = y * (h + padding) + padding, x * (w + padding) + padding
        grid[:, top:top + h, left:left + w] = batch[k]
    return grid


def unit(t, low, high):
    return (t.clamp(low, high) - low) / max(high - low, 1e-5)


@pytest.mark.parametrize("b,c,nrow,padding,pad_value", [(5, 3, 2, 2, 0.0), (7, 1, 3, 1, 0.5),
                                                        (3, 3, 8, 0, 1.0), (1, 3, 8, 2, 0.0)])
def test_make_grid_layout(b, c, nrow, padding, pad_value):
    x = torch.rand(b, c, 4, 6, generator=torch.Generator().manual_seed(b))
    out = make_grid(kiln.tensor(x.numpy()), nrow=nrow, padding=padding, pad_value=pad_value)
    np.testing.assert_array_equal(out.numpy(), reference_grid(x, nrow, padding,
                                                              pad_value).numpy())


def test_make_grid_list_and_single_image_forms():
    x = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    images = [kiln.tensor(img.numpy()) for img in x]
    np.testing.assert_array_equal(make_grid(images, nrow=2).numpy(),
                                  reference_grid(x, nrow=2).numpy())
    one = make_grid(kiln.tensor(x[0, :1].numpy()))             # (1, H, W) -> 3 channels
    np.testing.assert_array_equal(one.numpy(), x[0, :1].expand(3, 5, 5).numpy())
    with pytest.raises(TypeError, match="list of tensors"):
        make_grid([x[0].numpy()])


def test_make_grid_normalize():
    x = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 3
    k = kiln.tensor(x.numpy())
    out = make_grid(k, nrow=3, normalize=True)
    expected = reference_grid(unit(x, x.min().item(), x.max().item()), nrow=3)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(k.numpy(), x.numpy())          # the input is untouched
    out = make_grid(k, nrow=3, normalize=True, value_range=(-1.0, 2.0))
    np.testing.assert_allclose(out.numpy(), reference_grid(unit(x, -1.0, 2.0), 3).numpy(),
                               rtol=1e-6, atol=1e-7)
    out = make_grid(k, nrow=3, normalize=True, scale_each=True)
    each = torch.stack([unit(t, t.min().item(), t.max().item()) for t in x])
    np.testing.assert_allclose(out.numpy(), reference_grid(each, 3).numpy(), rtol=1e-6,
                               atol=1e-7)
    with pytest.raises(TypeError, match="value_range"):
        make_grid(k, normalize=True, value_range=[0, 1])


def test_save_image_writes_the_rounded_grid(tmp_path):
    x = torch.rand(6, 3, 4, 5, generator=torch.Generator().manual_seed(2))
    path = tmp_path / "grid.png"
    save_image(kiln.tensor(x.numpy()), str(path), nrow=4, padding=1)
    expected = reference_grid(x, 4, 1).mul(255).add(0.5).clamp(0, 255).byte()
    saved = np.array(Image.open(path))
    np.testing.assert_array_equal(saved, expected.permute(1, 2, 0).numpy())
    with open(tmp_path / "one.png", "wb") as f:                  # a file object and a format
        save_image(kiln.tensor(x[0].numpy()), f, format="PNG")
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "one.png")),
                                  x[0].mul(255).add(0.5).clamp(0, 255).byte()
                                  .permute(1, 2, 0).numpy())


def test_io_read_and_write_images(tmp_path):
    from kiln.vision import io
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (6, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    out = io.read_image(str(tmp_path / "a.png"))
    assert out.dtype == kiln.uint8
    np.testing.assert_array_equal(out.numpy(), rgba.transpose(2, 0, 1))
    rgb = io.read_image(tmp_path / "a.png", io.ImageReadMode.RGB)
    np.testing.assert_array_equal(rgb.numpy(), rgba[:, :, :3].transpose(2, 0, 1))
    gray = io.decode_image(io.read_file(str(tmp_path / "a.png")), mode=io.ImageReadMode.GRAY)
    expected = np.array(Image.fromarray(rgba).convert("L"))
    np.testing.assert_array_equal(gray.numpy(), expected[None])
    io.write_png(rgb, str(tmp_path / "b.png"))
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "b.png")), rgba[:, :, :3])
    with pytest.raises(ValueError, match="uint8"):
        io.write_png(rgb.float(), str(tmp_path / "c.png"))
