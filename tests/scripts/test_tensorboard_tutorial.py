"""The TensorBoard tutorial's patterns: kiln's losses equal torch's step by step, the compiled
step repeats them, and TensorBoard's reader finds the same logged running losses, images and
PR curves in kiln's log directory as in torch's."""

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.scripts.harness import check_same_losses


def _load(log_dir):
    acc = EventAccumulator(log_dir, size_guidance={"tensors": 0, "scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_tensorboard_tutorial_logs_what_torch_logs():
    t, k = check_same_losses("tensorboard_tutorial", rtol=1e-5)
    np.testing.assert_allclose(k["test_probs"].numpy(), t["test_probs"].numpy(), rtol=1e-4,
                               atol=1e-6)
    ta, ka = _load(t["log_dir"]), _load(k["log_dir"])
    for kind in ["scalars", "images", "tensors"]:
        assert sorted(ka.Tags()[kind]) == sorted(ta.Tags()[kind]), kind
    assert [e.step for e in ka.Scalars("training loss")] == \
        [e.step for e in ta.Scalars("training loss")]
    np.testing.assert_allclose([e.value for e in ka.Scalars("training loss")],
                               [e.value for e in ta.Scalars("training loss")], rtol=1e-5)
    for tag in ta.Tags()["tensors"]:            # the per-class PR curves
        (te,), (ke,) = ta.Tensors(tag), ka.Tensors(tag)
        np.testing.assert_allclose(ke.tensor_proto.float_val, te.tensor_proto.float_val,
                                   rtol=1e-4, atol=1e-6, err_msg=tag)
    assert ka.Graph() is not None
