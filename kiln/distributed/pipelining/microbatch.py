"""Splitting a batch into microbatches and merging the last stage's outputs back, by torch's
rule: `tensor_split` along the chunk dimension (dim 0 unless a `TensorChunkSpec` says
otherwise), so with a remainder the first microbatches are one row longer; non-tensor arguments
go to every microbatch unchanged."""

from __future__ import annotations

import kiln
from kiln import Tensor


class TensorChunkSpec:
    """The dimension a tensor argument is split along (torch's TensorChunkSpec)."""

    def __init__(self, split_dim: int):
        if not isinstance(split_dim, int):
            raise TypeError(f"TensorChunkSpec: split_dim must be an int, got "
                            f"{type(split_dim).__name__}")
        self.split_dim = split_dim

    def __repr__(self) -> str:
        return f"TensorChunkSpec({self.split_dim})"

    @staticmethod
    def from_tuple(chunk_dims: tuple[int, ...]) -> tuple[TensorChunkSpec, ...]:
        return tuple(TensorChunkSpec(d) for d in chunk_dims)

    @staticmethod
    def from_dict(chunk_dims: dict[str, int]) -> dict[str, TensorChunkSpec]:
        return {k: TensorChunkSpec(d) for k, d in chunk_dims.items()}


def split_tensor(what: str, tensor: Tensor, n: int, dim: int = 0) -> list[Tensor]:
    """`tensor` in `n` pieces along `dim`; an error when it has fewer than `n` rows there."""
    if tensor.dim() == 0 or tensor.shape[dim] < n:
        raise ValueError(f"{what}: cannot split a tensor of shape {list(tensor.shape)} into "
                         f"{n} microbatches along dim {dim}: it needs at least {n} rows there")
    return list(kiln.tensor_split(tensor, n, dim))


def _split_value(what: str, value, spec, n: int) -> list:
    if isinstance(value, Tensor):
        dim = 0 if spec is None else spec.split_dim
        return split_tensor(what, value, n, dim)
    return [value] * n


def split_args_kwargs_into_chunks(args: tuple, kwargs: dict | None, chunks: int,
                                  args_chunk_spec=None, kwargs_chunk_spec=None):
    """(list of per-microbatch args tuples, list of per-microbatch kwargs dicts)."""
    kwargs = kwargs or {}
    if args_chunk_spec is not None and len(args_chunk_spec) != len(args):
        raise ValueError(f"step: args_chunk_spec has {len(args_chunk_spec)} entries for "
                         f"{len(args)} positional arguments")
    specs = args_chunk_spec or (None,) * len(args)
    split_args = [_split_value("step", a, s, chunks) for a, s in zip(args, specs)]
    kspecs = kwargs_chunk_spec or {}
    split_kwargs = {k: _split_value("step", v, kspecs.get(k), chunks) for k, v in kwargs.items()}
    arg_mbs = [tuple(a[i] for a in split_args) for i in range(chunks)]
    kwarg_mbs = [{k: v[i] for k, v in split_kwargs.items()} for i in range(chunks)]
    return arg_mbs, kwarg_mbs


def merge_chunks(chunks: list, chunk_spec=None):
    """The microbatch outputs joined along dim 0 (a tuple output joined element by element)."""
    if chunk_spec is not None:
        raise NotImplementedError("merge_chunks: kiln merges along dim 0 only "
                                  "(output_merge_spec / chunk_spec is not supported)")
    first = chunks[0]
    if isinstance(first, Tensor):
        return kiln.cat(chunks, 0)
    if isinstance(first, (tuple, list)):
        return type(first)(merge_chunks([c[i] for c in chunks]) for i in range(len(first)))
    raise NotImplementedError(f"merge_chunks: cannot merge outputs of type "
                              f"{type(first).__name__}; return a tensor or a tuple of tensors")
