"""`ShardedGradScaler` (torch.distributed.fsdp.sharded_grad_scaler): dynamic loss scaling for
sharded models. Each rank sees only its gradient shards, so an inf/NaN found on one rank must
make every rank skip the step and back off the scale: the found-inf flag is all-reduced (MAX)
before the step."""

from __future__ import annotations

import kiln
from kiln.amp import GradScaler
from kiln.distributed import collectives as C
from kiln.distributed import process_group as pg
from kiln.distributed.process_group import ReduceOp


class ShardedGradScaler(GradScaler):
    """GradScaler whose inf/NaN check covers every rank's gradient shards. As torch's,
    `device="cuda"` without a GPU disables it (with a warning): pass `"cpu"` for CPU models."""

    def __init__(self, device: str = "cuda", init_scale: float = 2.0 ** 16,
                 backoff_factor: float = 0.5, growth_factor: float = 2.0,
                 growth_interval: int = 2000, enabled: bool = True, process_group=None):
        super().__init__(device, init_scale=init_scale, growth_factor=growth_factor,
                         backoff_factor=backoff_factor, growth_interval=growth_interval,
                         enabled=enabled)
        if process_group is not None and process_group is not pg.GroupMember.WORLD:
            raise ValueError("ShardedGradScaler: kiln has only the default process group; "
                             "pass process_group=None")
        self.process_group = process_group

    def unscale_(self, optimizer) -> None:
        super().unscale_(optimizer)
        if not self._enabled or not pg.is_initialized() or pg.get_world_size() == 1:
            return
        state = self._state(optimizer)
        flag = kiln.tensor([1.0 if state["found_inf"] else 0.0], dtype=kiln.float32)
        C.all_reduce(flag, op=ReduceOp.MAX)
        state["found_inf"] = bool(flag.item() > 0)
