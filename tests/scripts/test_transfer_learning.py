"""The transfer learning tutorial's patterns (set_grad_enabled phases, running corrects and
.double() accuracy, best weights by deepcopy saved in a TemporaryDirectory, a frozen backbone
with an optimizer over the new fc only): losses, the per-phase history and the best
accuracies equal torch's; the frozen backbone gets no gradients."""

import numpy as np

from tests.scripts.harness import check_same_losses


def test_transfer_learning_fine_tunes_and_extracts_features_as_torch():
    t, k = check_same_losses("transfer_learning", rtol=1e-5, compiled=False)
    assert [(p, acc) for p, _, acc in k["history"]] == [(p, acc) for p, _, acc in t["history"]]
    np.testing.assert_allclose([loss for _, loss, _ in k["history"]],
                               [loss for _, loss, _ in t["history"]], rtol=1e-5)
    assert k["best"] == t["best"]
    assert k["frozen"] and t["frozen"]
