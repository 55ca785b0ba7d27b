"""DDP communication hooks (torch.distributed.algorithms.ddp_comm_hooks.default_hooks): each
takes `(process_group, bucket)` and returns a `kiln.futures.Future` of the bucket's averaged
gradients. `allreduce_hook` is what DDP does without a hook; the compress hooks all-reduce a
float16 copy and write the result back into the bucket's dtype."""

from __future__ import annotations

import kiln
import kiln.distributed as dist
from kiln.distributed.reducer import GradBucket
from kiln.futures import Future

__all__ = ["allreduce_hook", "fp16_compress_hook", "bf16_compress_hook", "fp16_compress_wrapper",
           "bf16_compress_wrapper"]


def _group(process_group):
    return None if process_group is dist.GroupMember.WORLD else process_group


def _allreduce_fut(process_group, tensor: kiln.Tensor) -> Future:
    """Average `tensor` over the group in place: divided first (no overflow in float16),
    then summed."""
    group = _group(process_group)
    tensor.div_(dist.get_world_size(group))
    return dist.all_reduce(tensor, group=group, async_op=True).get_future().then(
        lambda fut: fut.value()[0])


def allreduce_hook(process_group, bucket: GradBucket) -> Future:
    """The bucket averaged over the group: the same result as DDP without a hook."""
    return _allreduce_fut(process_group, bucket.buffer())


def _compress_hook(dtype, process_group, bucket: GradBucket) -> Future:
    group = _group(process_group)
    buffer = bucket.buffer()
    compressed = buffer.to(dtype).div_(dist.get_world_size(group))

    def decompress(fut: Future) -> kiln.Tensor:
        buffer.copy_(fut.value()[0])        # back in place, in the bucket's dtype
        return buffer
    return dist.all_reduce(compressed, group=group, async_op=True).get_future().then(decompress)


def fp16_compress_hook(process_group, bucket: GradBucket) -> Future:
    """All-reduce the bucket as float16 (divided by the group size first), then cast back."""
    return _compress_hook(kiln.float16, process_group, bucket)


def bf16_compress_hook(process_group, bucket: GradBucket) -> Future:
    """Refused: kiln's collectives have no bfloat16 (MPI has no bfloat16 type)."""
    raise TypeError("bf16_compress_hook: kiln's all-reduce does not take bfloat16 (MPI has no "
                    "bfloat16 type, and kiln's NCCL backend does not map it); use "
                    "fp16_compress_hook, or no hook")


def fp16_compress_wrapper(hook):
    """`hook` run on a float16 copy of the bucket, its result cast back to the bucket's dtype
    (`fp16_compress_wrapper(allreduce_hook)` is `fp16_compress_hook`)."""
    def fp16_compress_wrapper_hook(hook_state, bucket: GradBucket) -> Future:
        bucket.set_buffer(bucket.buffer().to(kiln.float16))
        fut = hook(hook_state, bucket)

        def decompress(fut: Future) -> kiln.Tensor:
            compressed = bucket.buffer()
            compressed.copy_(fut.value())
            return compressed          # DDP casts it into the gradients' dtype
        return fut.then(decompress)
    return fp16_compress_wrapper_hook


def bf16_compress_wrapper(hook):
    """Refused, as bf16_compress_hook is: kiln's collectives have no bfloat16."""
    raise TypeError("bf16_compress_wrapper: kiln's all-reduce does not take bfloat16 (MPI has "
                    "no bfloat16 type); use fp16_compress_wrapper")
