"""The NLP tutorial's Bi-LSTM CRF pattern: legacy constructors and Variable, Python loops over
tags, Viterbi decoding."""

from tests.scripts.harness import check_same_losses


def test_bilstm_crf_same_losses_and_path_as_torch():
    t, k = check_same_losses("bilstm_crf", rtol=1e-4, atol=1e-4)
    assert k["path"] == t["path"]
    assert abs(k["score"] - t["score"]) < 1e-3 * max(1.0, abs(t["score"]))
