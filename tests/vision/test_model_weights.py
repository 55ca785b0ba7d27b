"""Pretrained weights in kiln.vision.models: the `*_Weights` enums and registry as torchvision
0.28 has them, the ImageClassification presets against Pillow / torch ops, and the builders
loading torchvision-format files (written here by torch.save from the architectures rebuilt
in torch) from kiln.hub's cache, with no network."""

import hashlib
import os
import re
import urllib.error
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from PIL import Image

import kiln
from kiln import hub
from kiln.vision import models
from kiln.vision.models import Weights, WeightsEnum
from tests.vision import zoo_reference as ref


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty $TORCH_HOME, and no network: a download attempt fails as urllib does offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(hub, "_hub_dir", None)

    def offline(request, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(hub, "urlopen", offline)
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def place(cache, weights, torch_model, legacy=False):
    """torch.save the model's state dict where kiln.hub looks for `weights.url` (in the
    pre-1.6 format with `legacy`, as torchvision's older files are)."""
    path = cache / os.path.basename(urlparse(weights.url).path)
    torch.save(torch_model.state_dict(), path, _use_new_zipfile_serialization=not legacy)
    return path


def randomized(torch_model, seed):
    """The model with random BatchNorm statistics (fresh ones are the identity in eval)."""
    g = torch.Generator().manual_seed(seed)
    for m in torch_model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
            m.weight.data.uniform_(0.8, 1.2, generator=g)
            m.bias.data.normal_(0, 0.1, generator=g)
    return torch_model.eval()


def assert_same_outputs(model, torch_model, size=64, seed=0):
    x = np.random.default_rng(seed).normal(size=(1, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.tensor(x)).numpy()
    model.eval()
    with kiln.no_grad():
        got = model(kiln.tensor(x)).numpy()
    assert got.shape == (1, 1000)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


# ---------------------------------------------------------------- loading from the cache

def test_weights_load_from_the_cache_as_torchvision_files(cache):
    torch.manual_seed(0)
    reference = randomized(ref.SqueezeNet("1_1"), 1)
    place(cache, models.SqueezeNet1_1_Weights.IMAGENET1K_V1, reference, legacy=True)
    for weights in ("DEFAULT", "IMAGENET1K_V1", "SqueezeNet1_1_Weights.IMAGENET1K_V1",
                    models.SqueezeNet1_1_Weights.DEFAULT):
        assert_same_outputs(models.squeezenet1_1(weights=weights), reference)
    assert_same_outputs(models.get_model("squeezenet1_1", weights="DEFAULT"), reference)


def test_pretrained_true_means_the_v1_weights_with_torchvision_warnings(cache):
    torch.manual_seed(1)
    reference = randomized(ref.efficientnet(1.0, 1.0), 2)
    place(cache, models.EfficientNet_B0_Weights.IMAGENET1K_V1, reference)
    with pytest.warns(UserWarning, match="'pretrained' is deprecated since 0.13"):
        model = models.efficientnet_b0(pretrained=True)
    assert_same_outputs(model, reference)
    with pytest.warns(UserWarning, match="positional parameter"):
        assert_same_outputs(models.efficientnet_b0(True), reference)
    with pytest.warns(UserWarning, match="equivalent to passing `weights=None`"):
        model = models.efficientnet_b0(pretrained=False)
    assert not np.allclose(model.classifier[1].weight.detach().numpy(),
                           reference.classifier[1].weight.detach().numpy())


def test_mobilenet_v3_weights_load(cache):
    torch.manual_seed(2)
    reference = randomized(ref.mobilenet_v3("large"), 3)
    place(cache, models.MobileNet_V3_Large_Weights.IMAGENET1K_V2, reference)
    assert_same_outputs(models.mobilenet_v3_large(weights="DEFAULT"), reference)


def test_densenet_files_with_the_published_old_key_names_load(cache):
    """torchvision's DenseNet files name `...denselayer1.norm.1.weight` (before the modules
    were renamed `norm1`); the builder renames them as torchvision's does."""
    torch.manual_seed(3)
    reference = randomized(ref.DenseNet(), 4)
    state = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v
             for k, v in reference.state_dict().items()
             if not k.endswith("num_batches_tracked")}       # the files predate it too
    path = cache / "densenet121-a639ec97.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    assert "features.denseblock1.denselayer1.norm.1.weight" in torch.load(path)
    assert_same_outputs(models.densenet121(weights=models.DenseNet121_Weights.DEFAULT),
                        reference)


def test_missing_file_without_network_says_where_to_put_it(cache):
    weights = models.ResNet18_Weights.IMAGENET1K_V1
    with pytest.raises(RuntimeError) as info:
        models.resnet18(weights=weights)
    message = str(info.value)
    assert weights.url in message
    assert str(cache / "resnet18-f37072fd.pth") in message
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_num_classes_must_agree_with_the_weights(cache):
    with pytest.raises(ValueError, match="'num_classes' expected value 1000 but got 10"):
        models.resnet50(weights="IMAGENET1K_V2", num_classes=10)
    with pytest.raises(ValueError, match="'IMAGENET1K_V9' is not a member of ResNet50_Weights"):
        models.resnet50(weights="IMAGENET1K_V9")
    with pytest.raises(TypeError, match="expected ResNet50_Weights but received "
                                        "ResNet18_Weights"):
        models.resnet50(weights=models.ResNet18_Weights.DEFAULT)


def test_downloads_are_checked_against_the_hash_in_the_file_name(tmp_path, monkeypatch):
    """Through a file:// URL: the name's sha256 prefix must match what arrives."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(hub, "_hub_dir", None)
    torch.manual_seed(4)
    reference = ref.ShuffleNetV2([4, 8, 4], [24, 48, 96, 192, 1024]).eval()
    source = tmp_path / "source.pth"
    torch.save(reference.state_dict(), source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    good, bad = tmp_path / f"shuffle-{digest[:10]}.pth", tmp_path / "shuffle-0123456789.pth"
    good.write_bytes(source.read_bytes())
    bad.write_bytes(source.read_bytes())

    class Shuffle_Weights(WeightsEnum):
        GOOD = Weights(good.as_uri(), None, {})
        BAD = Weights(bad.as_uri(), None, {})

    model = models.shufflenet_v2_x0_5()
    model.load_state_dict(Shuffle_Weights.GOOD.get_state_dict(progress=False, check_hash=True))
    assert_same_outputs(model, reference)
    with pytest.raises(RuntimeError, match="invalid hash value"):
        Shuffle_Weights.BAD.get_state_dict(progress=False, check_hash=True)
    assert not (tmp_path / "home" / "hub" / "checkpoints" / bad.name).exists()


# ---------------------------------------------------------------- enums and registry

def test_weights_enums_and_registry_follow_torchvision():
    W = models.ResNet50_Weights
    assert W.DEFAULT is W.IMAGENET1K_V2
    assert repr(W.IMAGENET1K_V1) == "ResNet50_Weights.IMAGENET1K_V1"
    assert [w.name for w in W] == ["IMAGENET1K_V1", "IMAGENET1K_V2"]   # DEFAULT is an alias
    assert models.get_weight("ResNet50_Weights.IMAGENET1K_V2") is W.IMAGENET1K_V2
    assert models.get_weight("MobileNet_V3_Large_Weights.DEFAULT") is \
        models.MobileNet_V3_Large_Weights.IMAGENET1K_V2
    assert models.get_model_weights("resnet50") is W
    assert models.get_model_weights(models.densenet121) is models.DenseNet121_Weights
    assert models.list_models(include="vgg1[19]*") == ["vgg11", "vgg11_bn", "vgg19", "vgg19_bn"]
    assert "alexnet" in models.list_models(models) and "resnet18" not in \
        models.list_models(exclude="resnet*")
    for name in models.list_models():
        enum_ = models.get_model_weights(name)
        assert enum_.DEFAULT in list(enum_)
        for w in enum_:
            assert re.fullmatch(r"https://download\.pytorch\.org/models/[\w.-]+-[0-9a-f]{8,10}"
                                r"\.pth", w.url), w.url
            if w.meta["categories"] is not None:
                assert len(w.meta["categories"]) == 1000
            assert isinstance(w.meta["num_params"], int) and len(w.meta["min_size"]) == 2
    categories = W.DEFAULT.meta["categories"]
    assert len(set(categories)) == 1000
    assert (categories[0], categories[281], categories[999]) == ("tench", "tabby",
                                                                 "toilet tissue")
    # the imagenet example's way of listing architectures still finds only builders
    names = sorted(name for name in models.__dict__ if name.islower()
                   and not name.startswith("__") and callable(models.__dict__[name]))
    assert set(models.list_models()) <= set(names)


def test_classification_preset_on_pil_images_matches_pillow_and_numpy():
    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8))
    preset = models.ResNet50_Weights.IMAGENET1K_V2.transforms()
    assert preset.crop_size == [224] and preset.resize_size == [232]
    out = preset(image)
    resized = np.asarray(image.resize((232, 267), Image.BILINEAR), dtype=np.float32) / 255
    top, left = round((267 - 224) / 2), round((232 - 224) / 2)
    crop = resized[top:top + 224, left:left + 224].transpose(2, 0, 1)
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    assert out.dtype == kiln.float32 and tuple(out.shape) == (3, 224, 224)
    np.testing.assert_allclose(out.numpy(), (crop - mean) / std, rtol=1e-5, atol=1e-5)


def test_classification_preset_on_tensors_matches_torch_interpolate():
    """ResNet-50 V2's preset (bilinear, resize 232, crop 224) on a float batch in [0, 1]."""
    rng = np.random.default_rng(6)
    batch = rng.random((2, 3, 330, 400), dtype=np.float32)
    preset = models.ResNet50_Weights.IMAGENET1K_V2.transforms()
    out = preset(kiln.tensor(batch)).numpy()
    x = TF.interpolate(torch.tensor(batch), size=(232, 281), mode="bilinear", antialias=True,
                       align_corners=False)
    top, left = round((232 - 224) / 2), round((281 - 224) / 2)     # torchvision's rounding
    x = x[..., top:top + 224, left:left + 224]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert out.shape == (2, 3, 224, 224)
    np.testing.assert_allclose(out, ((x - mean) / std).numpy(), rtol=1e-5, atol=5e-5)


def test_presets_carry_each_weights_sizes_and_interpolation():
    from kiln.vision.transforms import InterpolationMode
    b3 = models.EfficientNet_B3_Weights.DEFAULT.transforms()
    assert (b3.crop_size, b3.resize_size, b3.interpolation) == ([300], [320],
                                                               InterpolationMode.BICUBIC)
    b1 = models.EfficientNet_B1_Weights.IMAGENET1K_V2.transforms()
    assert (b1.crop_size, b1.resize_size, b1.interpolation) == ([240], [255],
                                                               InterpolationMode.BILINEAR)
    r18 = models.ResNet18_Weights.DEFAULT.transforms()
    assert (r18.crop_size, r18.resize_size, r18.mean, r18.std) == (
        [224], [256], [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def test_googlenet_weights_drop_the_untrained_aux_heads_and_transform_inputs(cache):
    torch.manual_seed(5)
    reference = randomized(ref.GoogLeNet(transform_input=True), 6)
    place(cache, models.GoogLeNet_Weights.IMAGENET1K_V1, reference, legacy=True)
    model = models.googlenet(weights="DEFAULT")
    assert model.aux1 is None and model.aux2 is None and model.transform_input
    assert_same_outputs(model, reference)
    with pytest.warns(UserWarning, match="auxiliary heads .* NOT pretrained"):
        model = models.googlenet(weights="DEFAULT", aux_logits=True)
    assert model.aux1 is not None


def test_inception_v3_weights_transform_inputs_and_keep_the_aux_head(cache):
    torch.manual_seed(7)
    reference = randomized(ref.Inception3(transform_input=True), 8)
    place(cache, models.Inception_V3_Weights.IMAGENET1K_V1, reference)
    model = models.inception_v3(weights="DEFAULT")
    assert model.AuxLogits is not None and model.transform_input
    assert_same_outputs(model, reference, size=75)
    # torchvision refuses aux_logits=False with weights (the file has the head)
    with pytest.raises(ValueError, match="'aux_logits' expected value True but got False"):
        models.inception_v3(weights="DEFAULT", aux_logits=False)
    preset = models.Inception_V3_Weights.DEFAULT.transforms()
    assert (preset.crop_size, preset.resize_size) == ([299], [342])


@pytest.mark.parametrize("build, weights, make_reference, legacy", [
    (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1,
     lambda: ref.ResNet(ref.BasicBlock, [2, 2, 2, 2]), False),
    (models.mobilenet_v2, models.MobileNet_V2_Weights.IMAGENET1K_V1, ref.MobileNetV2, True),
    (models.shufflenet_v2_x1_0, models.ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1,
     lambda: ref.ShuffleNetV2([4, 8, 4], [24, 116, 232, 464, 1024]), True),
])
def test_more_builders_load_their_files(cache, build, weights, make_reference, legacy):
    torch.manual_seed(8)
    reference = randomized(make_reference(), 9)
    place(cache, weights, reference, legacy=legacy)
    assert_same_outputs(build(weights=weights), reference)
