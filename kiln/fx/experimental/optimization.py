"""`torch.fx.experimental.optimization.fuse`: an eval-mode model with each BatchNorm folded into
the convolution or Linear layer that feeds it, found on the model's symbolic trace."""

from __future__ import annotations

import copy

import kiln.nn as nn
from kiln.fx._symbolic_trace import symbolic_trace
from kiln.fx.graph_module import GraphModule
from kiln.fx.node import Node
from kiln.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

__all__ = ["fuse", "matches_module_pattern", "replace_node_module"]

# (layer, the batch norm after it) pairs that fold into one layer
_PATTERNS = [(nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d),
             (nn.Conv3d, nn.BatchNorm3d), (nn.Linear, nn.BatchNorm1d)]


def matches_module_pattern(pattern: tuple, node: Node, modules: dict) -> bool:
    """Whether `node` calls a module of type pattern[1] on the output of a call of a module of
    type pattern[0] (the types exactly, as PyTorch matches them)."""
    if len(node.args) == 0:
        return False
    pair = (node.args[0], node)
    for expected, current in zip(pattern, pair):
        if not isinstance(current, Node) or current.op != "call_module" or \
                not isinstance(current.target, str) or current.target not in modules or \
                type(modules[current.target]) is not expected:
            return False
    return True


def replace_node_module(node: Node, modules: dict, new_module: nn.Module) -> None:
    """Install `new_module` where `node`'s call_module target lives, in its parent module."""
    assert isinstance(node.target, str)
    *parent_path, name = node.target.rsplit(".", 1)
    parent = modules[parent_path[0]] if parent_path else modules[""]
    modules[node.target] = new_module
    setattr(parent, name, new_module)


def fuse(model: nn.Module, inplace: bool = False, no_trace: bool = False) -> nn.Module:
    """A GraphModule of `model` (a copy unless `inplace`) in which every BatchNorm whose input
    is a Conv1d/2d/3d or Linear used only there, and which tracks running statistics, is folded
    into that layer (inference only: the model must be in eval mode)."""
    if not inplace:
        model = copy.deepcopy(model)
    traced = model if no_trace and isinstance(model, GraphModule) else \
        symbolic_trace(model)
    modules = dict(traced.named_modules())
    graph = copy.deepcopy(traced.graph)
    for pattern in _PATTERNS:
        for node in list(graph.nodes):
            if not matches_module_pattern(pattern, node, modules):
                continue
            layer_node = node.args[0]
            if len(layer_node.users) > 1:        # the layer's output is read elsewhere too
                continue
            layer, bn = modules[layer_node.target], modules[node.target]
            if not bn.track_running_stats:
                continue
            fold = fuse_linear_bn_eval if pattern[0] is nn.Linear else fuse_conv_bn_eval
            replace_node_module(layer_node, modules, fold(layer, bn))
            node.replace_all_uses_with(layer_node)
            graph.erase_node(node)
    return GraphModule(traced, graph)
