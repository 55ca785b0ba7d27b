"""`torch.<loss>` (the ATen-level forms, not nn.functional's): an integer `reduction` enum, and
for some of them no reduction by default, as PyTorch 2.13 gives."""

import numpy as np
import pytest

import kiln

torch = pytest.importorskip("torch")


def cases(lib, a, b, y):
    return {
        "bce_with_logits": lambda *r: lib.binary_cross_entropy_with_logits(a, b, None, None, *r),
        "kl_div": lambda *r: lib.kl_div(a, b, *r),
        "cosine_embedding": lambda *r: lib.cosine_embedding_loss(a.reshape(3, 2),
                                                                 b.reshape(3, 2), y, 0.1, *r),
        "hinge_embedding": lambda *r: lib.hinge_embedding_loss(a, lib.cat([y, y]), 1.0, *r),
        "margin_ranking": lambda *r: lib.margin_ranking_loss(a, b, lib.cat([y, y]), 0.2, *r),
        "triplet_margin": lambda *r: lib.triplet_margin_loss(a.reshape(3, 2), b.reshape(3, 2),
                                                             a.reshape(3, 2).flip(0), 1.0, 2.0,
                                                             1e-6, False, *r),
    }


@pytest.mark.parametrize("reduction", [(), (0,), (1,), (2,)])
def test_torch_level_losses_reduce_as_torch(reduction):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(6).astype(np.float32), rng.random(6).astype(np.float32)
    y = np.array([1.0, -1.0, 1.0], dtype=np.float32)
    k = cases(kiln, kiln.tensor(a), kiln.tensor(b), kiln.tensor(y))
    t = cases(torch, torch.tensor(a), torch.tensor(b), torch.tensor(y))
    for name in t:
        expected = t[name](*reduction).numpy()
        got = k[name](*reduction).numpy()
        assert got.shape == expected.shape, (name, reduction)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=name)
