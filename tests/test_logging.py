"""kiln._logging.set_logs (torch._logging's import path): kiln.compile's listing, section by
section, on the `kiln._logging` logger, as the TORCH_LOGS recipe turns them on one at a time."""

import logging

import numpy as np

import kiln


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_set_logs_prints_the_graph_fusion_and_kernels_it_is_asked_for():
    # torch_logs recipe: set_logs(dynamo=DEBUG), then graph=True, fusion=True, output_code=True,
    # each followed by a fresh compile (kiln had no torch._logging)
    records = _Records()
    logger = logging.getLogger("kiln._logging")
    logger.addHandler(records)

    @kiln.compile
    def fn(x, y):
        z = x + y
        return z + 2

    x, y = kiln.ones(2, 2), kiln.zeros(2, 2)
    seen = {}
    try:
        for flags in ({"dynamo": logging.DEBUG}, {"graph": True}, {"fusion": True},
                      {"output_code": True}):
            kiln._dynamo.reset()
            records.messages.clear()
            kiln._logging.set_logs(**flags)
            np.testing.assert_array_equal(fn(x, y).numpy(), np.full((2, 2), 3.0))
            seen[next(iter(flags))] = list(records.messages)
        kiln._logging.set_logs()
        kiln._dynamo.reset()
        records.messages.clear()
        fn(x, y)
        assert records.messages == []               # all off
    finally:
        kiln._logging.set_logs()
        logger.removeHandler(records)
    assert seen["dynamo"] == ["captured fn: 2 nodes, 2 inputs"]
    assert len(seen["graph"]) == 1 and "traced graph" in seen["graph"][0]
    assert "add(%x, %y)" in seen["graph"][0] and "fusion" not in seen["graph"][0]
    assert len(seen["fusion"]) == 1 and "fused_add" in seen["fusion"][0]
    assert all("generated kernels" in m for m in seen["output_code"]) and seen["output_code"]
