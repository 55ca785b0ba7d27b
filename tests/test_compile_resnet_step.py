"""A ResNet-style training step (padded and strided 3x3 convs without bias, batch norm, a 3x3/2
max pool with padding, residual adds with a 1x1 projection, adaptive average pooling, SGD with
momentum and weight decay), written as users write it, compiled on the CPU backends at one and
two threads: losses, parameters and batch-norm running statistics equal eager kiln's, and eager
equals PyTorch's. The benchmark rows have no padding, strides, residuals or 1x1 convs; this
step sends those through the conv products, `sink permutes` and the pooling kernels."""

import numpy as np
import pytest
import torch

import kiln


def _net(lib):
    nn, F = lib.nn, lib.nn.functional

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = nn.Sequential()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                              nn.BatchNorm2d(cout))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return F.relu(out + self.shortcut(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(8)
            self.pool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = Block(8, 8, 1)
            self.layer2 = Block(8, 16, 2)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = self.pool(F.relu(self.bn(self.stem(x))))
            x = self.layer2(self.layer1(x))
            return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    return Net()


def _step(lib, model):
    opt = lib.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    def step(x, y):
        loss = lib.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    return step


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_resnet_step_compiled_equals_eager_equals_torch(backend, threads, recwarn):
    before = kiln.get_num_threads()
    kiln.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        tmodel = _net(torch)
        state = {k: kiln.tensor(v.detach().numpy().copy())
                 for k, v in tmodel.state_dict().items()}
        emodel, cmodel = _net(kiln), _net(kiln)
        emodel.load_state_dict(state)
        cmodel.load_state_dict(state)
        tstep, estep = _step(torch, tmodel), _step(kiln, emodel)
        cstep = kiln.compile(_step(kiln, cmodel), backend=backend)
        rng = np.random.default_rng(0)
        for i in range(4):
            x = rng.standard_normal((8, 3, 16, 16), dtype=np.float32)
            y = rng.integers(0, 10, 8)
            lt = tstep(torch.tensor(x), torch.tensor(y)).item()
            le = estep(kiln.tensor(x), kiln.tensor(y)).item()
            lc = cstep(kiln.tensor(x), kiln.tensor(y)).item()
            assert le == pytest.approx(lt, rel=1e-4, abs=1e-5), f"step {i}: eager vs torch"
            assert lc == pytest.approx(le, rel=1e-5, abs=1e-6), f"step {i}: compiled vs eager"
        assert cstep.programs(), "the step did not compile"
        for (name, t), e, c in zip(tmodel.state_dict().items(), emodel.state_dict().values(),
                                   cmodel.state_dict().values()):
            np.testing.assert_allclose(e.numpy(), t.numpy(), rtol=1e-3, atol=1e-4, err_msg=name)
            np.testing.assert_allclose(c.numpy(), e.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
        assert not [w for w in recwarn if "kiln" in str(w.message)], \
            [str(w.message) for w in recwarn]
    finally:
        kiln.set_num_threads(before)
