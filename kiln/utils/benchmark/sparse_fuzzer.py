"""FuzzedSparseTensor: a COO tensor made each step from the Fuzzer's parameters, as
torch.utils.benchmark's: its sparse dims, density and coalescing named by parameters."""

from __future__ import annotations

import math

import kiln
from kiln.utils.benchmark.fuzzer import FuzzedTensor


class FuzzedSparseTensor(FuzzedTensor):
    """`size` as FuzzedTensor's; `sparse_dim`, `density` and `coalesced` name parameters (the
    leading `sparse_dim` dims are sparse, the rest dense: a hybrid tensor). As in torch, the
    tensor has ceil(sum(size) * density) indices, and an uncoalesced one holds each index
    twice (the second value drawn from a normal). `nnz` is accepted and unused, as in torch."""

    def __init__(self, name: str, size: tuple, min_elements: int | None = None,
                 max_elements: int | None = None, dim_parameter: str | None = None,
                 sparse_dim: str | None = None, nnz: str | None = None,
                 density: str | None = None, coalesced: str | None = None,
                 dtype=kiln.float32, cuda: bool = False) -> None:
        super().__init__(name=name, size=size, min_elements=min_elements,
                         max_elements=max_elements, dim_parameter=dim_parameter, dtype=dtype,
                         cuda=cuda)
        self._sparse_dim, self._density, self._coalesced = sparse_dim, density, coalesced

    @staticmethod
    def sparse_tensor_constructor(size, dtype, sparse_dim: int, nnz: int,
                                  is_coalesced: bool):
        """`nnz` random indices into the sparse dims (values: uniform floats, or integers in
        [1, 127)); drawn in torch's order, so after one manual_seed the tensor is torch's."""
        if isinstance(size, int):
            size = [size] * sparse_dim
        size = list(size)
        if nnz and all(n <= 0 for n in size[:sparse_dim]):
            raise ValueError(f"FuzzedSparseTensor: {nnz} elements cannot fit in size {size}")
        value_size = [nnz] + size[sparse_dim:]
        if dtype.is_floating_point:
            values = kiln.rand(size=value_size, dtype=dtype)
        else:
            values = kiln.randint(1, 127, size=value_size, dtype=dtype)
        indices = kiln.rand(sparse_dim, nnz)
        indices = (indices * kiln.tensor(size[:sparse_dim]).unsqueeze(1).to(indices)).long()
        if not is_coalesced:
            values = kiln.cat([values, kiln.randn_like(values)], 0)
            indices = kiln.cat([indices, indices], 1)
        tensor = kiln.sparse_coo_tensor(indices, values, kiln.Size(size))
        return tensor.coalesce() if is_coalesced else tensor

    def _make_tensor(self, params: dict, state):
        size, _, _ = self._size_and_steps(params)
        for role, name in (("density", self._density), ("coalesced", self._coalesced)):
            if name is None or name not in params:
                raise ValueError(f"FuzzedSparseTensor {self.name!r}: its {role} must name a "
                                 f"parameter, got {name!r}")
        density, is_coalesced = params[self._density], params[self._coalesced]
        nnz = math.ceil(sum(size) * density)
        sparse_dim = min(params[self._sparse_dim] if self._sparse_dim else len(size), len(size))
        tensor = self.sparse_tensor_constructor(size, self._dtype, sparse_dim, nnz,
                                                is_coalesced)
        if self._cuda:
            tensor = tensor.cuda()
        properties = {"numel": int(tensor.numel()), "shape": tensor.size(),
                      "is_coalesced": tensor.is_coalesced(), "density": density,
                      "sparsity": 1.0 - density, "sparse_dim": tensor.sparse_dim(),
                      "dense_dim": tensor.dense_dim(),
                      "is_hybrid": len(size[tensor.sparse_dim():]) > 0,
                      "dtype": str(self._dtype)}
        return tensor, properties
