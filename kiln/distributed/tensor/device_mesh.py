"""`DeviceMesh`: the ranks a DTensor is spread over. kiln has only the default process group, so
a mesh is one-dimensional and holds every rank of it, in order."""

from __future__ import annotations

from kiln.distributed import process_group as pg


class DeviceMesh:
    """A 1-D mesh of all ranks of the default group (torch.distributed.device_mesh.DeviceMesh)."""

    def __init__(self, device_type: str, mesh, *, mesh_dim_names: tuple[str, ...] | None = None,
                 _init_backend: bool = True):
        world = pg._require("DeviceMesh")
        ranks = [int(r) for r in (mesh.tolist() if hasattr(mesh, "tolist") else mesh)]
        if ranks != list(range(world.size)):
            raise ValueError(f"DeviceMesh: kiln's meshes are 1-D over every rank of the default "
                             f"group, [0, ..., {world.size - 1}]; got {ranks}. Use "
                             f"init_device_mesh({device_type!r}, ({world.size},))")
        self.device_type = str(device_type).split(":")[0]
        self.mesh_dim_names = tuple(mesh_dim_names) if mesh_dim_names else None
        self._ranks = tuple(ranks)

    @property
    def mesh(self) -> list[int]:
        return list(self._ranks)

    @property
    def ndim(self) -> int:
        return 1

    @property
    def shape(self) -> tuple[int]:
        return (len(self._ranks),)

    def size(self, mesh_dim: int | None = None) -> int:
        return len(self._ranks)

    def get_rank(self) -> int:
        return pg.get_rank()

    def get_local_rank(self, mesh_dim: int | str | None = None) -> int:
        return pg.get_rank()

    def get_group(self, mesh_dim: int | str | None = None):
        return pg.GroupMember.WORLD

    def __eq__(self, other) -> bool:
        return isinstance(other, DeviceMesh) and (self.device_type, self._ranks) == (
            other.device_type, other._ranks)

    def __hash__(self) -> int:
        return hash((self.device_type, self._ranks))

    def __repr__(self) -> str:
        names = f", mesh_dim_names={self.mesh_dim_names}" if self.mesh_dim_names else ""
        return f"DeviceMesh('{self.device_type}', {list(self._ranks)}{names})"


def init_device_mesh(device_type: str, mesh_shape: tuple[int, ...], *,
                     mesh_dim_names: tuple[str, ...] | None = None) -> DeviceMesh:
    """A mesh over the default group's ranks; only a 1-D shape of the world size is supported
    (no 2-D meshes: HSDP and tensor parallel are not built)."""
    world = pg._require("init_device_mesh")
    shape = tuple(int(s) for s in mesh_shape)
    if shape != (world.size,):
        raise ValueError(f"init_device_mesh: kiln supports only a 1-D mesh of all "
                         f"{world.size} rank(s), mesh_shape=({world.size},); got {shape}")
    return DeviceMesh(device_type, list(range(world.size)), mesh_dim_names=mesh_dim_names)
