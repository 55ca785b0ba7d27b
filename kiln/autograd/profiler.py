"""`torch.autograd.profiler` as an importable module: kiln.profiler.legacy's `profile` and
`record_function` (`import kiln.autograd.profiler as profiler`)."""

from kiln.profiler.legacy import *  # noqa: F401,F403
from kiln.profiler.legacy import profile, record_function  # noqa: F401


class emit_nvtx:  # noqa: N801 (torch's name)
    """`with torch.autograd.profiler.emit_nvtx():` every op kiln dispatches in the block puts
    an NVTX mark with its name (and its inputs' sizes with `record_shapes=True`) on the
    timeline Nsight Systems records, through CuPy's NVTX. PyTorch emits a range around each op;
    kiln's op observers see an op once it has run, so each op is one instant mark, placed
    right after its launch. Needs a GPU (NVTX is CUDA's), as PyTorch's does."""

    def __init__(self, enabled: bool = True, record_shapes: bool = False):
        self.enabled, self.record_shapes = enabled, record_shapes

    def _mark(self, name, args, attrs, out) -> None:
        from kiln import Tensor, cuda
        if self.record_shapes:
            sizes = [list(a.shape) if isinstance(a, Tensor) else [] for a in args]
            name = f"{name}, sizes = {sizes}"
        cuda.nvtx.mark(name)

    def __enter__(self):
        if self.enabled:
            from kiln import cuda
            from kiln.profiler.op_hooks import add_op_observer
            cuda.nvtx.mark("emit_nvtx")        # raises without a GPU, before anything is hooked
            add_op_observer(self._mark)
        return self

    def __exit__(self, *exc) -> bool:
        if self.enabled:
            from kiln.profiler.op_hooks import remove_op_observer
            remove_op_observer(self._mark)
        return False
