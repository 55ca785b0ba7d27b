"""The DDP tutorial series' Trainer in one process under `import kiln as torch`: a gloo group
of one, DDP, DistributedSampler with set_epoch, snapshots of `model.module` and a resumed
Trainer. Losses agree with torch's to rtol 1e-5 from torch's initial weights (the sampler's
order is torch's); the Trainer's compiled `_run_batch` (a bound method reading self.model and
self.optimizer, SGD with momentum) repeats eager's and replays compiled (no step falls back
to eager): the gradient all-reduce is a node of its program."""

from tests.scripts.test_recipes import compiled_matches, same_run


def test_ddp_series_trainer_matches_torch():
    t, k = same_run("ddp_series")
    assert k["values"]["resumed_from"] == 1 and len(k["losses"]) == 6 * 2 + 6 * 3
    compiled_matches("ddp_series", k, t)
