"""`kiln.utils.benchmark`, as torch.utils.benchmark: Timer, Measurement and Compare
(`timer.py`), the input Fuzzer (`fuzzer.py`, `sparse_fuzzer.py`, ready-made ones in
`op_fuzzers/`) and instruction counts under callgrind (`callgrind.py`)."""

from kiln.utils.benchmark.callgrind import (  # noqa: F401
    CallgrindStats, CopyIfCallgrind, FunctionCount, FunctionCounts)
from kiln.utils.benchmark.fuzzer import (  # noqa: F401
    FuzzedParameter, FuzzedTensor, Fuzzer, ParameterAlias)
from kiln.utils.benchmark.sparse_fuzzer import FuzzedSparseTensor  # noqa: F401
from kiln.utils.benchmark.timer import Compare, Measurement, TaskSpec, Timer  # noqa: F401
from kiln.utils.benchmark import op_fuzzers  # noqa: F401
