"""`replace_pattern(gm, pattern, replacement)`: find every non-overlapping copy of a traced
pattern in a GraphModule's graph and put the traced replacement in its place (torch.fx's
subgraph rewriter, for patterns with one output)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import kiln
from kiln.fx.graph import Graph
from kiln.fx.graph_module import GraphModule, _copy_attr
from kiln.fx.node import Node


class Match(NamedTuple):
    anchor: Node                 # the pattern's node the match was searched from (its output)
    nodes_map: dict              # pattern node -> graph node


def _as_graph(fn: Callable | Graph | GraphModule) -> tuple:
    from kiln.fx._symbolic_trace import symbolic_trace
    if isinstance(fn, Graph):
        return fn, None
    if isinstance(fn, GraphModule):
        return fn.graph, fn
    traced = symbolic_trace(fn)
    return traced.graph, traced


def _same_literal(a: Any, b: Any) -> bool:
    if isinstance(a, kiln.Tensor) or isinstance(b, kiln.Tensor):
        return a is b
    return type(a) is type(b) and a == b


class _Matcher:
    def __init__(self, pattern: Graph) -> None:
        self.placeholders = [n for n in pattern.nodes if n.op == "placeholder"]
        output = [n for n in pattern.nodes if n.op == "output"][0]
        returned = output.args[0]
        if not isinstance(returned, Node):
            raise NotImplementedError("kiln.fx.replace_pattern: the pattern must return one "
                                      "value")
        self.anchor = returned

    def match(self, gn: Node) -> dict | None:
        m = self._node(self.anchor, gn, {})
        if m is None:
            return None
        # a value the pattern computes inside itself must not be read outside the match
        inside = set(m.values())
        for pn, n in m.items():
            if pn.op != "placeholder" and pn is not self.anchor:
                if any(user not in inside for user in n.users):
                    return None
        return m

    def _node(self, pn: Node, gn: Node, m: dict) -> dict | None:
        if pn in m:
            return m if m[pn] is gn else None
        if pn.op == "placeholder":
            return {**m, pn: gn}
        if pn.op != gn.op or pn.target != gn.target or len(pn.args) != len(gn.args) or \
                set(pn.kwargs) != set(gn.kwargs) or gn in m.values():
            return None
        m = {**m, pn: gn}
        m = self._arg(pn.args, gn.args, m)
        return None if m is None else self._arg(pn.kwargs, gn.kwargs, m)

    def _arg(self, pa: Any, ga: Any, m: dict) -> dict | None:
        if isinstance(pa, Node):
            return self._node(pa, ga, m) if isinstance(ga, Node) else None
        if isinstance(pa, (list, tuple)):
            if type(pa) is not type(ga) or len(pa) != len(ga):
                return None
            for a, b in zip(pa, ga):
                m = self._arg(a, b, m)
                if m is None:
                    return None
            return m
        if isinstance(pa, dict):
            if not isinstance(ga, dict) or set(pa) != set(ga):
                return None
            for k in pa:
                m = self._arg(pa[k], ga[k], m)
                if m is None:
                    return None
            return m
        return m if _same_literal(pa, ga) else None


def replace_pattern(gm: GraphModule, pattern: Callable | Graph | GraphModule,
                    replacement: Callable | Graph | GraphModule) -> list:
    """Replace each match of `pattern` in `gm` by `replacement` (both traced; the
    replacement's parameters bind to the matched pattern's placeholders in order) and
    recompile; returns the Matches, in graph order."""
    pattern_graph, _ = _as_graph(pattern)
    replacement_graph, replacement_module = _as_graph(replacement)
    matcher = _Matcher(pattern_graph)
    graph = gm.graph
    used: set = set()
    matches = []
    for node in graph.nodes:
        if node.op in ("placeholder", "output") or node in used:
            continue
        m = matcher.match(node)
        if m is None:
            continue
        computed = [n for pn, n in m.items() if pn.op != "placeholder"]
        if any(n in used for n in computed):
            continue
        used.update(computed)
        matches.append(Match(anchor=matcher.anchor, nodes_map=m))

    rep_placeholders = [n for n in replacement_graph.nodes if n.op == "placeholder"]
    if len(rep_placeholders) != len(matcher.placeholders):
        raise ValueError(f"kiln.fx.replace_pattern: the pattern takes "
                         f"{len(matcher.placeholders)} inputs and the replacement "
                         f"{len(rep_placeholders)}; they must take the same inputs")
    if replacement_module is not None:
        for n in replacement_graph.nodes:
            if n.op in ("get_attr", "call_module") and not _has_path(gm, n.target):
                _copy_attr(replacement_module, gm, n.target)
    order = {n: i for i, n in enumerate(graph.nodes)}
    for match in matches:
        anchor = match.nodes_map[match.anchor]
        val_map = {rp: match.nodes_map[pp] for rp, pp in zip(rep_placeholders,
                                                               matcher.placeholders)}
        users = sorted(anchor.users, key=lambda u: order.get(u, len(order)))
        with graph.inserting_before(users[0] if users else anchor.next):
            new = graph.graph_copy(replacement_graph, val_map)
        if not isinstance(new, Node):
            raise NotImplementedError("kiln.fx.replace_pattern: the replacement must return "
                                      "one value")
        anchor.replace_all_uses_with(new)
        computed = [n for pn, n in match.nodes_map.items() if pn.op != "placeholder"]
        for n in sorted(computed, key=lambda u: order[u], reverse=True):
            graph.erase_node(n)
    gm.recompile()
    return matches


def _has_path(module: kiln.nn.Module, target: str) -> bool:
    obj = module
    for part in target.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True
