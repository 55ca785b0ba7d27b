"""The torch.export tutorial under `import kiln as torch`: exported modules run through
`ep.module()`, graph_signature and state_dict names, what export refuses, torch.cond, dynamic
shapes with `Dim` (bounds, a shared size, a size branch inside its Dim's bounds) and the calls
the program refuses, save/load through a file object. Values agree with torch's to rtol 1e-5."""

from tests.scripts.test_recipes import same_run


def test_export_tutorial_matches_torch():
    # ep.module() returned the ExportedProgram itself (no state_dict, not an nn.Module); the
    # export of `if x.shape[0] <= 16` under Dim(max=16) raised (kiln traced at sizes past the
    # max); torch.export.load of a BytesIO raised TypeError
    t, k = same_run("export_tutorial")
    v = k["values"]
    assert v["runner_is_module"] and not v["ep_not_module"]
    assert v["bad_if"] == v["wrong_shape"] == v["example_outside_bounds"] == "raised"
    assert v["dyn_below_min"] == v["dyn_above_max"] == v["dyn_static_dim"] == "raised"
    assert v["shared_dim_mismatch"] == "raised"
    assert tuple(v["guarded"].shape) == (4, 16)
