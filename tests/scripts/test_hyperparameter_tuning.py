"""The hyperparameter tuning tutorial's train_cifar without Ray, under `import kiln as torch`:
random_split, shuffled loaders, an SGD step, validation each epoch, a pickled checkpoint
restored, test accuracy. Same losses as torch to rtol 1e-5 from torch's initial weights (the
split and shuffles draw PyTorch's stream); the compiled step repeats eager's."""

from tests.scripts.test_recipes import compiled_matches, same_run


def test_hyperparameter_tuning_train_function_matches_torch():
    t, k = same_run("hyperparameter_tuning", values_rtol=1e-4)
    assert k["values"]["test_accuracy"] > 0.5 and k["values"]["epochs"] == "0,1,2"
    compiled_matches("hyperparameter_tuning", k, t)
