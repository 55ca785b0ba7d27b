"""60-minute blitz classifier: conv/pool net (`net = torch.compile(net)` in the compiled run),
CrossEntropyLoss, SGD momentum, shuffled DataLoader (different shuffles per library), per-class
accuracy via torch.max."""

from tests.scripts.harness import check_within_spread


def test_blitz_cifar_trains_like_torch():
    _, k = check_within_spread("blitz_cifar")
    assert set(k["per_class"]) == {"plane", "car", "bird", "cat"}
