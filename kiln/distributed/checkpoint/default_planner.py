"""`DefaultSavePlanner` / `DefaultLoadPlanner` (torch.distributed.checkpoint.default_planner):
accepted by `save` / `load` and their older spellings, which always plan as torch's defaults do
(nested dicts flattened to dotted keys, each rank writing its own shards and rank 0 the rest).
Arguments that would change that are refused."""

from __future__ import annotations

from kiln.distributed.checkpoint.planner import LoadPlanner, SavePlanner


class DefaultSavePlanner(SavePlanner):
    def __init__(self, flatten_state_dict: bool = True, flatten_sharded_tensors: bool = True,
                 dedup_replicated_tensors: bool | None = None,
                 dedup_save_to_lowest_rank: bool = False, enable_plan_caching: bool = False):
        if not flatten_state_dict:
            raise ValueError("DefaultSavePlanner: kiln always flattens nested state dicts "
                             "(flatten_state_dict=False is not supported)")
        self.flatten_state_dict = flatten_state_dict


class DefaultLoadPlanner(LoadPlanner):
    def __init__(self, flatten_state_dict: bool = True, flatten_sharded_tensors: bool = True,
                 allow_partial_load: bool = False):
        if not flatten_state_dict:
            raise ValueError("DefaultLoadPlanner: kiln always flattens nested state dicts "
                             "(flatten_state_dict=False is not supported)")
        if allow_partial_load:
            raise ValueError("DefaultLoadPlanner: allow_partial_load=True is not supported; "
                             "load a state dict holding only keys the checkpoint has")
        self.flatten_state_dict = flatten_state_dict
