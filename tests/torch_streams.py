"""Where PyTorch's CPU random streams are not the ones kiln reproduces.

PyTorch builds with MKL draw `bernoulli_(p)` (so dropout) and `exponential_` (so multinomial)
from MKL's own generator when the CPU is Intel's; elsewhere from the Mersenne Twister that
kiln reproduces (kiln/runtime/mt19937.py). Tests comparing those draws with PyTorch's skip
there."""

import platform


def pytorch_uses_mkl_stream() -> bool:
    import torch
    try:
        with open("/proc/cpuinfo") as f:
            intel = "GenuineIntel" in f.read()
    except OSError:
        intel = "Intel" in platform.processor()
    return intel and torch.backends.mkl.is_available()


MKL_REASON = ("PyTorch takes MKL's Bernoulli and exponential streams on Intel CPUs; kiln draws "
              "as PyTorch does elsewhere")
