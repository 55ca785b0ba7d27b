"""The tracer front end of torch.distributed.pipelining: `pipeline(module, mb_args,
split_spec={"layers.4": SplitPoint.BEGINNING})` traces the module with kiln.fx (the split-point
submodules kept as single call_module nodes), cuts the node list at the split points, and makes
one GraphModule per stage. A value a later stage needs (a skip connection, the model input)
is passed through the stages in between as an extra output. `Pipe.build_stage` wraps a stage's
GraphModule in a `PipelineStage`. What kiln.fx cannot trace (data-dependent control flow),
parameters shared across stages and `pipe_split()` markers raise NotImplementedError."""

from __future__ import annotations

import enum

import kiln
from kiln.distributed.pipelining.stage import PipelineStage


class SplitPoint(enum.Enum):
    """Where `pipeline`'s split_spec cuts a model: before or after the named submodule."""
    BEGINNING = 1
    END = 2


def pipe_split() -> None:
    raise NotImplementedError("pipe_split(): kiln's pipeline() cuts only at submodules; name "
                              "them in split_spec={'layers.4': SplitPoint.BEGINNING}")


class _SplitTracer(kiln.fx.Tracer):
    """kiln.fx's tracer with the split-point submodules kept whole (one call_module node)."""

    def __init__(self, names: set[str]):
        super().__init__()
        self._names = names

    def is_leaf_module(self, m, module_qualified_name: str) -> bool:
        return module_qualified_name in self._names or super().is_leaf_module(
            m, module_qualified_name)


class Pipe:
    """The stages `pipeline` cut: `split_gm.submod_<i>` is stage i's GraphModule."""

    def __init__(self, split_gm, num_stages: int):
        self.split_gm, self.num_stages = split_gm, num_stages

    def get_stage_module(self, stage_idx: int):
        if not 0 <= stage_idx < self.num_stages:
            raise ValueError(f"Pipe: stage {stage_idx} is out of range of {self.num_stages} "
                             "stages")
        return getattr(self.split_gm, f"submod_{stage_idx}")

    def build_stage(self, stage_index: int, device, group=None) -> PipelineStage:
        return PipelineStage(self.get_stage_module(stage_index), stage_index, self.num_stages,
                             device, group=group)

    def __repr__(self) -> str:
        return f"Pipe({self.num_stages} stages)"


def build_stage(stage_module, stage_index: int, pipe_info, device, group=None) -> PipelineStage:
    """torch's free-function form: `pipe_info` is the Pipe (its `num_stages` is used)."""
    return PipelineStage(stage_module, stage_index, pipe_info.num_stages, device, group=group)


def pipeline(module, mb_args, mb_kwargs=None, split_spec=None, split_policy=None) -> Pipe:
    """Split `module` into stages at the submodules `split_spec` names. kiln traces
    symbolically, so `mb_args` (an example microbatch, which torch's export needs) is not run."""
    if split_policy is not None:
        raise NotImplementedError("pipeline(): split_policy is not supported; give split_spec")
    if mb_kwargs:
        raise NotImplementedError("pipeline(): mb_kwargs is not supported; pass the inputs "
                                  "positionally in mb_args")
    spec = dict(split_spec or {})
    modules = dict(module.named_modules())
    for name, point in spec.items():
        if name not in modules:
            raise ValueError(f"pipeline(): split_spec names {name!r}, which is not a submodule "
                             f"of {type(module).__name__}")
        if not isinstance(point, SplitPoint):
            raise TypeError(f"pipeline(): split_spec[{name!r}] must be a SplitPoint, got "
                            f"{point!r}")
    graph = _SplitTracer(set(spec)).trace(module)
    stage_of = _assign_stages(graph, spec)
    num_stages = max(stage_of.values()) + 1
    split = kiln.nn.Module()
    for s in range(num_stages):
        split.add_module(f"submod_{s}", _stage_module(module, graph, stage_of, s, num_stages))
    _check_unshared(split, num_stages)
    return Pipe(split, num_stages)


def _check_unshared(split, num_stages: int) -> None:
    """Each rank trains its own copy of its stage's parameters: none may be in two stages."""
    owner = {}
    for s in range(num_stages):
        for name, p in getattr(split, f"submod_{s}").named_parameters():
            if owner.setdefault(id(p), (s, name))[0] != s:
                raise NotImplementedError(
                    f"pipeline(): parameter {name!r} is used by stages {owner[id(p)][0]} and "
                    f"{s}; kiln cannot share a parameter between stages")


def _assign_stages(graph, spec: dict) -> dict:
    """node -> stage index: the split points met so far; a get_attr goes with its users."""
    stage_of, stage, seen = {}, 0, set()
    for node in graph.nodes:
        if node.op == "call_module" and node.target in spec:
            if node.target in seen:
                raise NotImplementedError(f"pipeline(): split-point module {node.target!r} is "
                                          "called more than once")
            seen.add(node.target)
            if spec[node.target] is SplitPoint.BEGINNING and stage_of:
                stage += 1
        stage_of[node] = stage
        if node.op == "call_module" and spec.get(node.target) is SplitPoint.END:
            stage += 1
    missing = set(spec) - seen
    if missing:
        raise ValueError(f"pipeline(): the split-point modules {sorted(missing)} are never "
                         "called by forward")
    for node in graph.nodes:
        if node.op == "output":
            stage_of[node] = max(stage_of.values())
    for node in graph.nodes:
        if node.op == "get_attr":
            users = {stage_of[u] for u in node.users}
            if len(users) > 1:
                raise NotImplementedError(f"pipeline(): {node.target!r} is used by stages "
                                          f"{sorted(users)}; kiln cannot share a parameter "
                                          "between stages")
            stage_of[node] = users.pop() if users else stage_of[node]
    return stage_of


def _live(graph, stage_of: dict, boundary: int) -> list:
    """The values made before stage `boundary` that it or a later stage uses, in graph order."""
    return [n for n in graph.nodes if stage_of[n] < boundary and n.op != "get_attr"
            and any(stage_of[u] >= boundary for u in n.users)]


def _stage_module(root, graph, stage_of: dict, s: int, num_stages: int):
    """Stage s's GraphModule: placeholders for what it receives, its nodes, and as output what
    the next stage needs (the last stage: the model's output)."""
    sub, env = kiln.fx.Graph(), {}
    inputs = [n for n in graph.nodes if n.op == "placeholder"] if s == 0 else \
        _live(graph, stage_of, s)
    for n in inputs:
        env[n] = sub.placeholder(n.name)
    for n in graph.nodes:
        if stage_of[n] != s or n in env:
            continue
        if n.op == "output":
            sub.output(kiln.fx.map_arg(n.args[0], lambda a: env[a]))
        else:
            env[n] = sub.node_copy(n, lambda a: env[a])
    if s < num_stages - 1:
        outs = _live(graph, stage_of, s + 1)
        sub.output(tuple(env[n] for n in outs) if len(outs) > 1 else env[outs[0]])
    return kiln.fx.GraphModule(root, sub)
