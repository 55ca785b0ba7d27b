"""Optimization + save/load tutorials: train, torch.save model and optimizer state_dicts,
restore into fresh objects with torch.load(weights_only=True), resume; same losses as torch."""

from tests.scripts.harness import check_same_losses


def test_save_load_same_losses_as_torch():
    t, k = check_same_losses("save_load", compiled=False)
    assert k["after_load"] == k["before"]          # the restored model is the saved one
    assert abs(k["final"][0] / t["final"][0] - 1) < 1e-5
