"""pytorch/examples mnist_hogwild: a model in shared memory trained by forked
torch.multiprocessing processes. One process without dropout is deterministic: its losses and
the parent's test loss (which sees the child's updates through shared memory) agree with
torch's to rtol 1e-5. Two processes race (hogwild), so only what must hold is checked."""

import math

from tests.scripts.harness import run
from tests.scripts.test_recipes import same_run


def test_hogwild_one_process_matches_torch():
    t, k = same_run("mnist_hogwild", dropout=False)
    assert abs(k["test_loss"] / t["test_loss"] - 1) < 1e-5
    assert k["values"] == t["values"] and k["values"]["shared"] and k["values"]["changed"]


def test_hogwild_two_processes_share_their_updates():
    k = run("mnist_hogwild", "kiln", seed=0, num_processes=2)
    assert k["values"]["exitcodes"] == "0,0" and k["values"]["shared"]
    assert all(loss > 0 for loss in k["losses"])            # both children logged every step
    assert k["test_loss"] < math.log(10)                     # below chance: the parent learned
