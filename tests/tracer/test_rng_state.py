"""get_rng_state / set_rng_state restore the global generator's stream, across manual_seed."""

import numpy as np
import pytest

import kiln


def test_set_rng_state_restores_the_stream_after_manual_seed():
    kiln.manual_seed(0)
    kiln.rand(2)
    state = kiln.get_rng_state()
    expected = kiln.rand(5).numpy()
    kiln.manual_seed(123)                       # a different seed: a different PCG64 stream
    kiln.randn(7)
    kiln.set_rng_state(state)
    np.testing.assert_array_equal(kiln.rand(5).numpy(), expected)
    gen = kiln.Generator().manual_seed(4)
    saved = gen.get_state()
    first = kiln.rand(3, generator=gen).numpy()
    gen.manual_seed(99)
    gen.set_state(saved)
    np.testing.assert_array_equal(kiln.rand(3, generator=gen).numpy(), first)
    with pytest.raises((TypeError, ValueError), match="get_rng_state|get_state"):
        kiln.set_rng_state(kiln.zeros(5, dtype=kiln.int64))     # not a state it gave
