"""pytorch/examples imagenet/main.py's scaffolding (meters, top-k accuracy, checkpoints with a
best copy, resume, StepLR, cudnn flags, accelerator probes) around a small ResNet: kiln's
losses equal torch's step by step, and so do the validation accuracies and losses."""

import numpy as np

from tests.scripts.harness import check_same_losses


def test_imagenet_scaffolding_trains_validates_and_resumes_as_torch():
    t, k = check_same_losses("imagenet", rtol=1e-5, compiled=False)
    assert len(k["losses"]) == 12 and k["log_lines"] == t["log_lines"]
    np.testing.assert_allclose(np.array(k["results"]), np.array(t["results"]), rtol=1e-5,
                               atol=1e-6)
    assert k["best_acc1"] == t["best_acc1"] and k["lr"] == t["lr"]
