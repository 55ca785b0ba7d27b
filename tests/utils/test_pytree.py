"""kiln.utils._pytree against torch.utils._pytree: the same leaves, the same rebuilt trees,
the same maps and key paths, and the same errors, on nested containers of every kind."""

import collections

import numpy as np
import pytest
import torch
import torch.utils._pytree as tp

import kiln
import kiln.utils._pytree as kp

Point = collections.namedtuple("Point", "x y")


def _trees(lib):
    return [
        1, None, [], {},
        {"b": [1, (2, 3)], "a": None},
        [Point(1, 2), {"k": 3}, (4,)],
        collections.OrderedDict(b=1, a=[2, 3]),
        collections.defaultdict(list, {"x": [1, 2]}),
        collections.deque([1, (2, 3)], maxlen=5),
        (lib.ones(2), [lib.zeros(1), "text", 2.5]),
        lib.tensor([1.0, 3.0]).max(0),          # a return type (torch: a struct sequence)
    ]


def _plain(x):
    return x.tolist() if isinstance(x, (torch.Tensor, kiln.Tensor)) else x


@pytest.mark.parametrize("index", range(11))
def test_flatten_unflatten_and_map_match_torch(index):
    k, t = _trees(kiln)[index], _trees(torch)[index]
    k_leaves, k_spec = kp.tree_flatten(k)
    t_leaves, t_spec = tp.tree_flatten(t)
    assert [_plain(x) for x in k_leaves] == [_plain(x) for x in t_leaves]
    assert k_spec.num_leaves == t_spec.num_leaves and k_spec.num_nodes == t_spec.num_nodes
    rebuilt = kp.tree_unflatten(list(range(len(k_leaves))), k_spec)
    expected = tp.tree_unflatten(list(range(len(t_leaves))), t_spec)
    assert type(rebuilt).__name__ == type(expected).__name__
    assert kp.tree_leaves(rebuilt) == tp.tree_leaves(expected)
    assert repr(rebuilt).replace("kiln", "torch") == repr(expected)
    double = kp.tree_map(lambda v: v * 2 if isinstance(v, (int, float)) else v, k)
    t_double = tp.tree_map(lambda v: v * 2 if isinstance(v, (int, float)) else v, t)
    assert [_plain(x) for x in kp.tree_leaves(double)] == \
        [_plain(x) for x in tp.tree_leaves(t_double)]


def test_key_paths_match_torch():
    tree = {"a": [1, Point(2, 3)], "b": (4, {"c": 5})}
    ours = [(kp.keystr(p), v) for p, v in kp.tree_leaves_with_path(tree)]
    theirs = [(tp.keystr(p), v) for p, v in tp.tree_leaves_with_path(tree)]
    assert ours == theirs
    got = kp.tree_map_with_path(lambda p, v: kp.keystr(p) + str(v), tree)
    want = tp.tree_map_with_path(lambda p, v: tp.keystr(p) + str(v), tree)
    assert got == want


def test_map_only_all_any_and_several_trees():
    tree = [kiln.ones(2), 3, (kiln.zeros(1), "s")]
    out = kp.tree_map_only(kiln.Tensor, lambda t: t + 1, tree)
    assert out[0].tolist() == [2.0, 2.0] and out[1] == 3 and out[2][0].tolist() == [1.0]
    assert kp.tree_all_only(int, lambda v: v > 2, tree)
    assert not kp.tree_any(lambda v: v is None, tree)
    assert kp.tree_map(lambda a, b: a + b, {"x": 1, "y": [2]}, {"x": 10, "y": [20]}) == \
        {"x": 11, "y": [22]}
    with pytest.raises(ValueError, match="mismatch"):
        kp.tree_map(lambda a, b: a, [1, 2], [1])
    with pytest.raises(ValueError, match="has length 1"):
        kp.tree_unflatten([1], kp.tree_structure([1, 2]))


@pytest.mark.parametrize("mod", [tp, kp], ids=["torch", "kiln"])
def test_registered_node_flattens_through(mod):
    class Pair:
        def __init__(self, a, b):
            self.a, self.b = a, b

    mod.register_pytree_node(Pair, lambda p: ([p.a, p.b], None),
                             lambda children, _: Pair(*children))
    leaves, spec = mod.tree_flatten({"p": Pair(1, [2, 3])})
    assert leaves == [1, 2, 3]
    back = mod.tree_unflatten([7, 8, 9], spec)
    assert (back["p"].a, back["p"].b) == (7, [8, 9])
    with pytest.raises(ValueError, match="already registered"):
        mod.register_pytree_node(Pair, lambda p: ([], None), lambda c, _: Pair(0, 0))


def test_is_leaf_stops_descent():
    tree = {"a": [1, 2], "b": [3]}
    for mod in (tp, kp):
        leaves = mod.tree_leaves(tree, is_leaf=lambda x: isinstance(x, list))
        assert leaves == [[1, 2], [3]]
    assert np.array_equal(kp.tree_leaves({"a": np.ones(2)})[0], np.ones(2))


def test_flatten_and_unflatten_leave_no_reference_cycle():
    # a cycle would keep the leaves alive until the garbage collector ran
    import gc
    import weakref
    from kiln.utils._pytree import tree_flatten, tree_flatten_with_path, tree_unflatten

    class Leaf:
        pass

    gc.disable()
    try:
        leaf = Leaf()
        held = weakref.ref(leaf)
        leaves, spec = tree_flatten({"a": [leaf, 1], "b": (2,)})
        paths, _ = tree_flatten_with_path({"a": [leaf]})
        rebuilt = tree_unflatten(leaves, spec)
        assert rebuilt["a"][0] is leaf
        del leaf, leaves, paths, rebuilt
        assert held() is None
    finally:
        gc.enable()
