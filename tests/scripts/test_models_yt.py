"""The introyt "building models" tutorial under `import kiln as torch`: the printed models,
parameters, layer outputs, pooling and batch norm are torch's text (`kiln.` for `torch.`
aside); the LSTM tagger's losses agree to rtol 1e-5 from torch's initial weights, and its
compiled step repeats eager's."""

from tests.scripts.test_recipes import compiled_matches, same_run


def test_models_yt_tutorial_matches_torch():
    t, k = same_run("models_yt", skip_values=("printed",))
    assert k["values"]["printed"].replace("kiln.", "torch.") == t["values"]["printed"]
    compiled_matches("models_yt", k, t)
