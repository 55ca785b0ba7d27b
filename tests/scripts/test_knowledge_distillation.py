"""Knowledge distillation tutorial: teacher and student CNNs with cross-entropy, then students
distilled through soft targets (softmax/log_softmax at T, scaled KL sum), CosineEmbeddingLoss on
hidden representations (avg_pool1d), and MSELoss on a regressor against teacher features from a
forward hook; every phase's step compiled in the compiled run."""

from tests.scripts.harness import check_same_losses


def test_knowledge_distillation_matches_torch():
    # dropout off: the two libraries draw different masks
    t, k = check_same_losses("knowledge_distillation", dropout=0.0)
    assert k["accuracy"] == t["accuracy"]
    assert k["n_params"] == t["n_params"]
    assert k["hooked"] and t["hooked"]
    for phase, losses in t["phase_losses"].items():
        assert len(k["phase_losses"][phase]) == len(losses) > 0, phase
