"""Autograd tutorial: BCE-with-logits gradients, no_grad/detach, accumulation with
retain_graph and zero_()."""

from tests.scripts.harness import check_same_values


def test_autograd_tutorial_same_values_as_torch():
    check_same_values("autograd_tutorial")
