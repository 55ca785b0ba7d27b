"""`DeviceMesh`: the ranks a DTensor is spread over, arranged in an n-D grid, with one process
group per mesh dimension (the ranks along it that share this rank's other coordinates).

A 1-D mesh of all ranks uses the default group. An n-D mesh (`init_device_mesh("cpu", (2, 2),
mesh_dim_names=("dp", "tp"))`) makes its groups with `new_group` when it is built, on every
rank, for every row of every dimension in the same order (MPI_Comm_create is collective over
the world). `mesh["tp"]` and `mesh["dp", "tp"]` are views of it that reuse its groups.
"""

from __future__ import annotations

import numpy as np

from kiln.distributed import process_group as pg


class DeviceMesh:
    """An n-D grid of the default group's ranks (torch.distributed.device_mesh.DeviceMesh)."""

    def __init__(self, device_type: str, mesh, *, mesh_dim_names: tuple[str, ...] | None = None,
                 _init_backend: bool = True):
        world = pg._require("DeviceMesh")
        ranks = np.asarray(mesh.tolist() if hasattr(mesh, "tolist") else mesh, dtype=np.int64)
        if ranks.ndim == 0:
            raise ValueError(f"DeviceMesh: mesh must hold at least one dimension of ranks, got "
                             f"{ranks.tolist()}")
        if sorted(ranks.reshape(-1).tolist()) != list(range(world.size)):
            raise ValueError(f"DeviceMesh: kiln's meshes hold every rank of the default group "
                             f"once (0 to {world.size - 1}); got {ranks.tolist()}. Use "
                             f"init_device_mesh({device_type!r}, shape) with a shape whose "
                             f"product is {world.size}")
        names = tuple(mesh_dim_names) if mesh_dim_names else None
        if names is not None and (len(names) != ranks.ndim or len(set(names)) != len(names)):
            raise ValueError(f"DeviceMesh: mesh_dim_names {names} must name each of the "
                             f"{ranks.ndim} mesh dimension(s) once")
        self.device_type = str(device_type).split(":")[0]
        self.mesh_dim_names = names
        self._ranks = ranks
        where = np.argwhere(ranks == world.rank)[0]
        self._coord = tuple(int(c) for c in where)
        self._groups = self._make_groups(world) if _init_backend else None
        self._root, self._root_dims = self, tuple(range(ranks.ndim))

    def _make_groups(self, world) -> list:
        """One group per dimension: the line of ranks through this rank along it. Every rank
        creates every line's group, dimension by dimension, row by row (new_group is
        collective over the world)."""
        if self._ranks.ndim == 1 and self._ranks.tolist() == list(range(world.size)):
            return [pg.GroupMember.WORLD]
        groups = []
        for dim in range(self._ranks.ndim):
            lines = np.moveaxis(self._ranks, dim, -1).reshape(-1, self._ranks.shape[dim])
            if lines.shape[1] == world.size:        # one line of every rank: the world itself
                groups.append(pg.GroupMember.WORLD)
                continue
            mine = None
            for line in lines.tolist():
                if line != sorted(line):
                    raise ValueError(f"DeviceMesh: the ranks along dimension {dim} must "
                                     f"increase (a group's ranks are in global order); got "
                                     f"{self._ranks.tolist()}")
                group = pg.new_group(line)
                if world.rank in line:
                    mine = group
            groups.append(mine)
        return groups

    @classmethod
    def _view(cls, root: "DeviceMesh", dims: tuple[int, ...]) -> "DeviceMesh":
        """The mesh over root dimensions `dims` (in that order) through this rank."""
        mesh = cls.__new__(cls)
        index = tuple(slice(None) if d in dims else root._coord[d]
                      for d in range(root._ranks.ndim))
        kept = sorted(dims)
        ranks = root._ranks[index]
        mesh._ranks = np.transpose(ranks, [kept.index(d) for d in dims])
        mesh.device_type = root.device_type
        mesh.mesh_dim_names = tuple(root.mesh_dim_names[d] for d in dims) \
            if root.mesh_dim_names else None
        mesh._coord = tuple(root._coord[d] for d in dims)
        mesh._groups = [root._groups[d] for d in dims]
        mesh._root, mesh._root_dims = root, tuple(dims)
        return mesh

    @staticmethod
    def _concatenate(meshes: list["DeviceMesh"]) -> "DeviceMesh":
        """Views of one mesh (its dp and tp meshes) joined into the view of all their
        dimensions, in the order given: what FSDP's parameters live on with tensor
        parallelism."""
        root = meshes[0]._root
        if any(m._root is not root for m in meshes):
            raise ValueError("DeviceMesh._concatenate: the meshes must be cut from one mesh "
                             "(mesh['dp'], mesh['tp'] of one init_device_mesh)")
        dims = tuple(d for m in meshes for d in m._root_dims)
        if len(set(dims)) != len(dims):
            raise ValueError(f"DeviceMesh._concatenate: the meshes share a dimension "
                             f"({[m.mesh_dim_names for m in meshes]})")
        return root if dims == root._root_dims else DeviceMesh._view(root, dims)

    # ------------------------------------------------------------------ torch's API
    @property
    def mesh(self) -> list:
        """The global ranks, as nested lists in the mesh's shape."""
        return self._ranks.tolist()

    @property
    def ndim(self) -> int:
        return int(self._ranks.ndim)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self._ranks.shape)

    def size(self, mesh_dim: int | str | None = None) -> int:
        """The number of ranks in the mesh, or along `mesh_dim`."""
        if mesh_dim is None:
            return int(self._ranks.size)
        return self.shape[self._dim(mesh_dim, "size")]

    def get_rank(self) -> int:
        """This process's global rank (torch's meaning; see get_local_rank)."""
        return pg.get_rank()

    def get_local_rank(self, mesh_dim: int | str | None = None) -> int:
        """This rank's coordinate along `mesh_dim` (its rank in that dimension's group)."""
        return self._coord[self._need_dim(mesh_dim, "get_local_rank")]

    def get_coordinate(self) -> list[int]:
        return list(self._coord)

    def get_group(self, mesh_dim: int | str | None = None):
        """The process group of the ranks along `mesh_dim` through this rank."""
        return self._groups[self._need_dim(mesh_dim, "get_group")]

    def get_all_groups(self) -> list:
        return list(self._groups)

    def __getitem__(self, names) -> "DeviceMesh":
        """`mesh["tp"]`: the 1-D mesh along "tp" through this rank; `mesh["dp", "tp"]`: those
        dimensions, in that order."""
        names = (names,) if isinstance(names, str) else tuple(names)
        if not self.mesh_dim_names:
            raise RuntimeError("DeviceMesh: cannot slice a mesh without mesh_dim_names; give "
                               "init_device_mesh(..., mesh_dim_names=(...))")
        missing = [n for n in names if n not in self.mesh_dim_names]
        if missing or len(set(names)) != len(names):
            raise KeyError(f"Invalid mesh_dim_names {names} specified. Valid mesh_dim_names "
                           f"are {self.mesh_dim_names}.")
        if names == self.mesh_dim_names:
            return self
        return DeviceMesh._view(self._root, tuple(self._root_dims[self.mesh_dim_names.index(n)]
                                                  for n in names))

    def _dim(self, mesh_dim: int | str, what: str) -> int:
        if isinstance(mesh_dim, str):
            if not self.mesh_dim_names or mesh_dim not in self.mesh_dim_names:
                raise KeyError(f"DeviceMesh.{what}: no mesh dimension named {mesh_dim!r} "
                               f"(mesh_dim_names={self.mesh_dim_names})")
            return self.mesh_dim_names.index(mesh_dim)
        if not -self.ndim <= mesh_dim < self.ndim:
            raise IndexError(f"DeviceMesh.{what}: mesh_dim {mesh_dim} is out of range for a "
                             f"{self.ndim}-d mesh")
        return mesh_dim % self.ndim

    def _need_dim(self, mesh_dim, what: str) -> int:
        if mesh_dim is None:
            if self.ndim > 1:
                raise RuntimeError(f"DeviceMesh.{what}: optional kwarg `mesh_dim` needs to be "
                                   f"specified when device_mesh.ndim > 1 (this mesh is "
                                   f"{self.ndim}-d)")
            return 0
        return self._dim(mesh_dim, what)

    def __eq__(self, other) -> bool:
        return isinstance(other, DeviceMesh) and (
            self.device_type, self.shape, self._ranks.tolist(), self.mesh_dim_names) == (
            other.device_type, other.shape, other._ranks.tolist(), other.mesh_dim_names)

    def __hash__(self) -> int:
        return hash((self.device_type, self.shape, tuple(self._ranks.reshape(-1).tolist()),
                     self.mesh_dim_names))

    def __repr__(self) -> str:
        names = f", mesh_dim_names={self.mesh_dim_names}" if self.mesh_dim_names else ""
        return f"DeviceMesh('{self.device_type}', {self.mesh}{names})"


def init_device_mesh(device_type: str, mesh_shape: tuple[int, ...], *,
                     mesh_dim_names: tuple[str, ...] | None = None) -> DeviceMesh:
    """A mesh of the default group's ranks 0..world-1 laid out row-major in `mesh_shape`
    (whose product must be the world size); an n-D mesh creates its groups here, a
    collective every rank must call."""
    world = pg._require("init_device_mesh")
    shape = tuple(int(s) for s in mesh_shape)
    if not shape or any(s < 1 for s in shape) or int(np.prod(shape)) != world.size:
        raise ValueError(f"init_device_mesh: mesh_shape {shape} must multiply to the world "
                         f"size {world.size} (kiln's meshes hold every rank)")
    if mesh_dim_names is not None and len(tuple(mesh_dim_names)) != len(shape):
        raise ValueError(f"init_device_mesh: mesh_dim_names {tuple(mesh_dim_names)} must name "
                         f"each of the {len(shape)} dimension(s) of mesh_shape {shape}")
    return DeviceMesh(device_type, np.arange(world.size).reshape(shape),
                      mesh_dim_names=mesh_dim_names)
