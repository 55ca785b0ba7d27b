"""kiln.nn is composed from tensor ops only: whole training steps trace with no graph break."""

from __future__ import annotations

import numpy as np
import pytest

import kiln
import kiln.nn as nn
import kiln.nn.functional as F


def _cnn_step():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1),
                          nn.Linear(4, 10))
    x, y = kiln.randn(8, 1, 8, 8), kiln.randint(0, 10, (8,))

    def step(x, y):
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1, ignore_index=3)
        loss.backward()
        return loss
    return step, (x, y)


def _lstm_step():
    model = nn.LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True)
    head = nn.Linear(8, 1)
    x, y = kiln.randn(2, 5, 3), kiln.rand(2, 5, 1)

    def step(x, y):
        out, _ = model(x)
        loss = F.binary_cross_entropy_with_logits(head(out), y)
        loss.backward()
        return loss
    return step, (x, y)


def _transformer_step():
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True,
                                                             norm_first=True), 2)
    emb = nn.Embedding(20, 8, padding_idx=0)
    ids = kiln.randint(0, 20, (2, 6))
    mask = kiln.zeros(2, 6, dtype=kiln.bool)

    def step(ids, mask):
        out = model(emb(ids), src_key_padding_mask=mask, mask=None)
        loss = F.mse_loss(out, kiln.zeros_like(out)) + F.kl_div(
            F.log_softmax(out, -1), F.softmax(out.detach(), -1), reduction="batchmean")
        loss.backward()
        return loss
    return step, (ids, mask)


@pytest.mark.parametrize("make", [_cnn_step, _lstm_step, _transformer_step],
                         ids=["cnn", "lstm", "transformer"])
def test_training_step_traces_without_graph_breaks(make, capsys):
    step, args = make()
    report = kiln.compiler.explain(step, *args)
    assert report.graph_break_count == 0, report.breaks
    assert report.graph_count == 1


def test_compiled_forward_matches_eager():
    kiln.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(64, 3)).eval()
    x = kiln.randn(4, 1, 8, 8)

    @kiln.compile
    def forward(x):
        with kiln.no_grad():
            return F.log_softmax(model(x), -1)
    eager = forward.fn(x).numpy()
    for _ in range(2):
        np.testing.assert_allclose(forward(x).numpy(), eager, rtol=1e-5, atol=1e-6)


def test_training_trajectory_matches_torch():
    """Ten SGD steps of a small CNN from the same weights end at the same weights as torch."""
    import torch

    from tests.nn.layer_parity import build_pair

    def make(lib_nn):
        return lib_nn.Sequential(lib_nn.Conv2d(1, 4, 3, padding=1), lib_nn.BatchNorm2d(4),
                                 lib_nn.ReLU(), lib_nn.MaxPool2d(2), lib_nn.Flatten(),
                                 lib_nn.Linear(64, 10))
    t_model, k_model = build_pair(make, train=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 1, 8, 8))
    y = rng.integers(0, 10, 16)
    for _ in range(10):
        for lib, model in ((torch, t_model), (kiln, k_model)):
            model.zero_grad()
            xs = lib.tensor(x) if lib is kiln else torch.from_numpy(x)
            ys = lib.tensor(y) if lib is kiln else torch.from_numpy(y)
            loss = lib.nn.functional.cross_entropy(model(xs), ys)
            loss.backward()
            with lib.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
    assert float(loss) < 2.0
    for key, t_value in t_model.state_dict().items():
        np.testing.assert_allclose(k_model.state_dict()[key].numpy(), t_value.numpy(),
                                   rtol=1e-9, atol=1e-10, err_msg=key)
