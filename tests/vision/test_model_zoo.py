"""kiln.vision's model zoo against torchvision's architectures transcribed in torch
(tests/vision/zoo_reference.py): the same state_dict keys, order and shapes (so torchvision's
pretrained files load), the same eval outputs from the same weights and BatchNorm statistics,
the same training-step outputs and parameter gradients, and torchvision's parameter counts."""

import numpy as np
import pytest
import torch

import kiln
from kiln.vision import models
from kiln.vision.models.vgg import cfgs
from tests.vision import zoo_reference as ref


def shapes(state):
    return [(k, tuple(v.shape)) for k, v in state.items()]


def randomize_statistics(model, seed):
    """Give every BatchNorm non-trivial running statistics and affine parameters, so that eval
    mode exercises them (fresh ones are the identity)."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, kiln.nn.BatchNorm2d):
            n = module.num_features
            for key, array in (("running_mean", rng.normal(0, 0.1, n)),
                               ("running_var", rng.uniform(0.5, 1.5, n)),
                               ("weight", rng.uniform(0.8, 1.2, n)),
                               ("bias", rng.normal(0, 0.1, n))):
                state[f"{name}.{key}"] = kiln.tensor(array.astype(np.float32))
    model.load_state_dict(state, strict=False)


def to_torch(kiln_model, torch_model):
    state = {k: torch.tensor(v.numpy()) for k, v in kiln_model.state_dict().items()}
    torch_model.load_state_dict(state)


def assert_close(actual, expected, rtol=1e-4, scale=1e-4):
    """allclose with an absolute floor relative to the reference's magnitude."""
    atol = scale * max(float(np.abs(expected).max()), 1e-6)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def check_against_torch(model, reference, size, seed=0, batch=2, step_dtype="float64",
                        channels=3):
    assert shapes(model.state_dict()) == shapes(reference.state_dict())
    randomize_statistics(model, seed)
    to_torch(model, reference)
    x = np.random.default_rng(seed).normal(size=(batch, channels, size, size))
    x = x.astype(np.float32)
    model.eval()
    reference.eval()
    with torch.no_grad():
        expected = reference(torch.tensor(x)).numpy()
    with kiln.no_grad():
        assert_close(model(kiln.tensor(x)).numpy(), expected)
    step(model, reference, x, step_dtype)


def step(model, reference, x, step_dtype):
    # One training step (batch statistics, every parameter's gradient), in float64: through
    # dozens of BatchNorms over 2x2 maps the float32 gradients of torch itself are a few
    # percent from its float64 ones, too far apart to compare two implementations.
    if step_dtype is None:
        return
    model.train().to(getattr(kiln, step_dtype))
    reference.train().to(getattr(torch, step_dtype))
    tol = 1e-8 if step_dtype == "float64" else 1e-4
    outs = model(kiln.tensor(x, dtype=getattr(kiln, step_dtype)))
    t_outs = reference(torch.tensor(x, dtype=getattr(torch, step_dtype)))
    if not isinstance(outs, tuple):       # GoogLeNet's training outputs are a tuple
        outs, t_outs = (outs,), (t_outs,)
    sum((out * out).mean() for out in outs).backward()
    sum((out * out).mean() for out in t_outs).backward()
    assert len(outs) == len(t_outs)
    for out, t_out in zip(outs, t_outs):
        assert_close(out.detach().numpy(), t_out.detach().numpy(), rtol=tol, scale=tol)
    t_params = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        assert_close(p.grad.numpy(), t_params[name].grad.numpy(), rtol=100 * tol,
                     scale=100 * tol)
    t_buffers = dict(reference.named_buffers())
    for name, b in model.named_buffers():
        assert_close(b.numpy(), t_buffers[name].numpy(), rtol=tol, scale=tol)


# Small members of each family (the same classes and code paths as the published
# configurations, whose layouts the next test checks) keep the float64 step fast. Inputs are
# large enough that the last BatchNorms see 2x2 maps: over 1x1 maps and a batch of 2 they
# normalize two values to +-1 and the step is too ill-conditioned to compare.
SMALL_B0 = ref.B0_STAGES[:3]           # expand 1 and 6, kernels 3 and 5, a residual block

CASES = {
    "squeezenet1_0": (lambda: models.squeezenet1_0(num_classes=10, dropout=0.0),
                      lambda: ref.SqueezeNet("1_0", 10, 0.0), 32),
    "squeezenet1_1": (lambda: models.squeezenet1_1(num_classes=10, dropout=0.0),
                      lambda: ref.SqueezeNet("1_1", 10, 0.0), 32),
    "mobilenet_v2": (lambda: models.mobilenet_v2(num_classes=10, dropout=0.0, width_mult=0.5),
                     lambda: ref.MobileNetV2(10, 0.5, dropout=0.0), 48),
    "mobilenet_v3_small": (lambda: models.mobilenet_v3_small(num_classes=10, dropout=0.0),
                           lambda: ref.mobilenet_v3("small", 10, 0.0), 48),
    "densenet": (lambda: models.DenseNet(8, (2, 2, 2, 2), 16, num_classes=10),
                 lambda: ref.DenseNet(8, (2, 2, 2, 2), 16, num_classes=10), 64),
    "efficientnet": (lambda: models.EfficientNet(
                         [models.efficientnet.MBConvConfig(*s) for s in SMALL_B0], 0.0,
                         stochastic_depth_prob=0.0, num_classes=10),
                     lambda: ref.efficientnet(1.0, 1.0, 10, 0.0, SMALL_B0), 32),
    "resnext": (lambda: models.ResNet(models.Bottleneck, [1, 1, 1, 1], num_classes=10,
                                      groups=32, width_per_group=4),
                lambda: ref.ResNet(ref.Bottleneck, [1, 1, 1, 1], 10, 32, 4), 48),
    "googlenet": (lambda: models.googlenet(num_classes=10, dropout=0.0, dropout_aux=0.0,
                                           init_weights=True),
                  lambda: ref.GoogLeNet(10, dropout=0.0, dropout_aux=0.0), 64),
    "shufflenet_v2_x0_5": (lambda: models.shufflenet_v2_x0_5(num_classes=10),
                           lambda: ref.ShuffleNetV2([4, 8, 4], [24, 48, 96, 192, 1024], 10),
                           48),
}


@pytest.mark.parametrize("name", list(CASES))
def test_architecture_matches_torchvision(name):
    make, make_reference, size = CASES[name]
    kiln.manual_seed(0)
    check_against_torch(make(), make_reference(), size)


def test_vgg11_bn_matches_torchvision():
    """Eval outputs only: VGG's 25088x4096 classifier makes a float64 training step 1 GB, and
    torchvision's N(0, 0.01) init of it 10 s in kiln (nn.Linear's default init stands in:
    init_weights=False). Its layers are the standard ones the other models step through."""
    kiln.manual_seed(0)
    check_against_torch(models.vgg11_bn(num_classes=10, dropout=0.0, init_weights=False),
                        ref.vgg(cfgs["A"], True, 10, 0.0), 32, step_dtype=None)


# The published configurations: names and shapes against the transcription, parameter
# counts against torchvision's meta
LAYOUTS = {
    "mobilenet_v2": (models.mobilenet_v2, ref.MobileNetV2),
    "inception_v3": (lambda: models.inception_v3(init_weights=False), ref.Inception3),
    "googlenet": (lambda: models.googlenet(init_weights=False), ref.GoogLeNet),
    "densenet121": (models.densenet121, ref.DenseNet),
    "efficientnet_b0": (models.efficientnet_b0, lambda: ref.efficientnet(1.0, 1.0)),
    "resnext50_32x4d": (models.resnext50_32x4d,
                        lambda: ref.ResNet(ref.Bottleneck, [3, 4, 6, 3], 1000, 32, 4)),
    "mobilenet_v3_large": (models.mobilenet_v3_large, lambda: ref.mobilenet_v3("large")),
    "shufflenet_v2_x1_0": (models.shufflenet_v2_x1_0,
                           lambda: ref.ShuffleNetV2([4, 8, 4], [24, 116, 232, 464, 1024])),
    "densenet161": (models.densenet161, lambda: ref.DenseNet(48, (6, 12, 36, 24), 96)),
    "densenet169": (models.densenet169, lambda: ref.DenseNet(32, (6, 12, 32, 32), 64)),
    "densenet201": (models.densenet201, lambda: ref.DenseNet(32, (6, 12, 48, 32), 64)),
    "efficientnet_b1": (models.efficientnet_b1, lambda: ref.efficientnet(1.0, 1.1)),
    "efficientnet_b2": (models.efficientnet_b2, lambda: ref.efficientnet(1.1, 1.2)),
    "efficientnet_b3": (models.efficientnet_b3, lambda: ref.efficientnet(1.2, 1.4)),
    "shufflenet_v2_x2_0": (models.shufflenet_v2_x2_0,
                           lambda: ref.ShuffleNetV2([4, 8, 4], [24, 244, 488, 976, 2048])),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_family_members_have_torchvision_layout_and_parameter_count(name):
    build, make_reference = LAYOUTS[name]
    model = build()
    assert shapes(model.state_dict()) == shapes(make_reference().state_dict())
    # torchvision counts GoogLeNet as its pretrained builder returns it: without the aux heads
    count = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("aux"))
    assert count == models.get_model_weights(name).DEFAULT.meta["num_params"]


def test_inception_v3_matches_torchvision():
    """The whole network in eval mode at its smallest input, 75x75 (its training step would
    need 299x299 inputs for the aux head: the blocks' steps are checked one by one below)."""
    kiln.manual_seed(0)
    check_against_torch(models.inception_v3(num_classes=10, init_weights=False),
                        ref.Inception3(10), 75, batch=1, step_dtype=None)


INCEPTION_BLOCKS = {
    "A": (lambda m: m.InceptionA(192, 32), lambda: ref.InceptionA(192, 32), 192, 9),
    "B": (lambda m: m.InceptionB(288), lambda: ref.InceptionB(288), 288, 9),
    "C": (lambda m: m.InceptionC(768, 128), lambda: ref.InceptionC(768, 128), 768, 5),
    "D": (lambda m: m.InceptionD(768), lambda: ref.InceptionD(768), 768, 7),
    "E": (lambda m: m.InceptionE(1280), lambda: ref.InceptionE(1280), 1280, 3),
    "Aux": (lambda m: m.InceptionAux(768, 10), lambda: ref.InceptionAux(768, 10), 768, 17),
}


@pytest.mark.parametrize("name", list(INCEPTION_BLOCKS))
def test_inception_blocks_match_torchvision(name):
    from kiln.vision.models import inception
    make, make_reference, channels, size = INCEPTION_BLOCKS[name]
    kiln.manual_seed(0)
    check_against_torch(make(inception), make_reference(), size, channels=channels)


def test_families_start_from_torchvision_initialization():
    """Each family's init as torchvision writes it (statistics over the big tensors)."""
    kiln.manual_seed(0)

    def arr(t):
        return t.detach().numpy()

    m = models.mobilenet_v2()                   # Kaiming normal (fan_out), Linear N(0, 0.01)
    w = arr(m.features[18][0].weight)           # 1280 x 320 x 1 x 1
    assert abs(w.std() / np.sqrt(2 / 1280) - 1) < 0.02
    assert abs(arr(m.classifier[1].weight).std() / 0.01 - 1) < 0.02
    assert (arr(m.classifier[1].bias) == 0).all() and (arr(m.features[1].conv[0][1].weight)
                                                       == 1).all()
    e = models.efficientnet_b0()                # Linear uniform in +-1/sqrt(out_features)
    fc = arr(e.classifier[1].weight)
    assert fc.max() <= 1 / np.sqrt(1000) and fc.min() >= -1 / np.sqrt(1000)
    assert abs(fc.std() / (1 / np.sqrt(3000)) - 1) < 0.02
    s = models.squeezenet1_1()                  # Kaiming uniform (fan_in); final conv N(0, .01)
    w = arr(s.features[12].expand3x3.weight)    # 256 x 64 x 3 x 3
    assert np.abs(w).max() <= np.sqrt(6 / (64 * 9)) and abs(w.std() / np.sqrt(2 / 576) - 1) < 0.03
    assert abs(arr(s.classifier[1].weight).std() / 0.01 - 1) < 0.03
    d = models.densenet121()                    # Kaiming normal (fan_in), Linear bias 0
    w = arr(d.features.denseblock4.denselayer16.conv2.weight)    # 32 x 128 x 3 x 3
    assert abs(w.std() / np.sqrt(2 / (128 * 9)) - 1) < 0.03
    assert (arr(d.classifier.bias) == 0).all()
    g = models.googlenet(num_classes=10, init_weights=True)      # N(0, 0.01) truncated at +-2
    assert abs(arr(g.inception5b.branch2[1].conv.weight).std() / 0.01 - 1) < 0.02
    from kiln.vision.models.inception import InceptionAux
    i = models.inception_v3(num_classes=10, init_weights=True)   # std 0.1; the aux fc 0.001
    assert abs(arr(i.Mixed_7c.branch3x3dbl_2.conv.weight).std() / 0.1 - 1) < 0.02
    assert isinstance(i.AuxLogits, InceptionAux)
    assert abs(arr(i.AuxLogits.fc.weight).std() / 0.001 - 1) < 0.05
    assert abs(arr(i.AuxLogits.conv1.conv.weight).std() / 0.1 - 1) < 0.02   # never 0.01
