"""pytorch/examples legacy/snli: the Bottle mixin Linear, a shared bidirectional 2-layer LSTM
encoder from new_zeros states, whole-model torch.save snapshots reloaded for evaluation."""

import numpy as np

from tests.scripts.harness import check_same_losses, no_compile_fallback


def test_snli_same_losses_dev_and_snapshot_as_torch():
    # the compiled step takes the batch object itself: its tensors are the program's inputs,
    # so each new batch replays (it traced again per object, then ran eagerly past the limit)
    with no_compile_fallback():
        t, k = check_same_losses("snli", dropout=0.0, rtol=1e-5, atol=1e-6)
    assert [a for a, _ in k["dev"]] == [a for a, _ in t["dev"]]
    np.testing.assert_allclose([l for _, l in k["dev"]], [l for _, l in t["dev"]], rtol=1e-5)
    assert k["train_acc"] == t["train_acc"] and k["snapshots"] == t["snapshots"]
    # the pickled model comes back as the script's class, with the trained weights
    assert k["restored_type"] == "SNLIClassifier"
    assert k["restored_eval"][0] == t["restored_eval"][0]
    np.testing.assert_allclose(k["restored_eval"][1], t["restored_eval"][1], rtol=1e-5)
