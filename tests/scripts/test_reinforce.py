"""pytorch/examples REINFORCE: dropout policy, Categorical sample/log_prob, normalized returns.
Sampling differs between libraries: kiln's late episode length must be within torch's spread."""

from tests.scripts.harness import check_within_spread


def test_reinforce_learns_like_torch():
    # the episode loop reads actions into Python every step: nothing to compile
    check_within_spread("reinforce", key="late_length", compiled=False)
