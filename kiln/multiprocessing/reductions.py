"""How kiln tensors cross process boundaries in multiprocessing: through shared memory.

Registered with multiprocessing's ForkingPickler (used by its queues, pipes and Process
arguments), the reducer moves a CPU tensor to shared memory if it is not there yet and sends
the segment's file descriptor (multiprocessing passes it to the receiver), the byte offset,
shape, strides and dtype: never the tensor's bytes. The receiver maps the same memory, so
writes on either side are seen by both (Hogwild training).
"""

from __future__ import annotations

from multiprocessing.reduction import DupFd, ForkingPickler

import kiln
from kiln import Tensor
from kiln.nn.parameter import Parameter
from kiln.runtime import shared_memory
from kiln.runtime.device import CPU


def _dtype_by_name(name: str):
    return getattr(kiln, name if name != "bool" else "bool")


def rebuild_tensor(fd_handle, size: int, offset: int, shape: tuple, strides: tuple,
                   np_dtype: str, dtype_name: str, requires_grad: bool,
                   parameter: bool) -> Tensor:
    seg = shared_memory.attach(fd_handle.detach(), size)
    data = shared_memory.rebuild(seg, offset, shape, strides, np_dtype)
    t = Tensor._make(data, _dtype_by_name(dtype_name), CPU)
    if parameter:
        return Parameter(t, requires_grad)
    t.requires_grad = requires_grad
    return t


def reduce_tensor(tensor: Tensor):
    if tensor.device.type != "cpu":
        raise RuntimeError(f"kiln.multiprocessing: sharing a {tensor.device} tensor between "
                           "processes is not supported; move it to the CPU (.cpu()) first")
    if tensor.grad_fn is not None:
        raise RuntimeError("kiln.multiprocessing: a tensor with autograd history (a non-leaf "
                           "that requires grad) cannot cross processes; send .detach()")
    tensor.share_memory_()
    seg, offset, shape, strides, np_dtype = shared_memory.handle(tensor._data)
    return rebuild_tensor, (DupFd(seg.fd), seg.size, offset, shape, strides, np_dtype,
                            tensor.dtype.name, tensor.requires_grad,
                            isinstance(tensor, Parameter))


def init_reductions() -> None:
    """Register the reducer for Tensor and Parameter (multiprocessing looks up exact types)."""
    ForkingPickler.register(Tensor, reduce_tensor)
    ForkingPickler.register(Parameter, reduce_tensor)
