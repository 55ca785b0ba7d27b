"""FGSM adversarial example tutorial: a LeNet trained (compiled step in the compiled run), saved
and loaded, then attacked per image with the sign of the input's gradient for several epsilons:
accuracies and the saved adversarial images agree with torch's."""

import numpy as np

from tests.scripts.harness import check_same_losses


def test_fgsm_matches_torch():
    # dropout off for training: the two libraries draw different masks
    t, k = check_same_losses("fgsm", dropout=0.0)
    assert k["accuracies"] == t["accuracies"]
    assert t["accuracies"][0] > 0.5 and t["accuracies"][-1] < t["accuracies"][0]
    for k_examples, t_examples in zip(k["examples"], t["examples"]):
        assert [e[:2] for e in k_examples] == [e[:2] for e in t_examples]
        for (_, _, k_image), (_, _, t_image) in zip(k_examples, t_examples):
            assert isinstance(k_image, np.ndarray) and k_image.shape == (16, 16)
            np.testing.assert_allclose(k_image, t_image, rtol=1e-5, atol=1e-6)
