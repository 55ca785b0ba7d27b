"""PyTorch recipes and intermediate tutorials run as written under `import kiln as torch`:
pruning, stochastic weight averaging, EmbeddingBag text classification, gradient checkpointing,
partial / meta-device checkpoint loading, scaled_dot_product_attention, autograd.Function under
torch.func, module hooks. Each run starts from torch's initial weights; the per-step losses
agree to rtol 1e-5 (float32) and every entry of the script's `values` agrees with torch's."""

import numpy as np

from tests.scripts.harness import (_as_array, _check_compiled, _convert_state, no_compile_fallback,
                                   run)


def same_run(program: str, rtol: float = 1e-5, atol: float = 1e-6, values_rtol: float = 1e-5,
             values_atol: float = 1e-6, skip_values: tuple = (), torch_kwargs: dict = {},
             **kwargs) -> tuple[dict, dict]:
    """torch's run (given `torch_kwargs` too), then kiln's from torch's initial state: the
    losses agree step by step and so does every entry of `values` (strings, flags and numbers
    exactly, tensors to rtol)."""
    t = run(program, "torch", seed=0, **kwargs, **torch_kwargs)
    k = run(program, "kiln", seed=0, initial_state=_convert_state(t["initial_state"]), **kwargs)
    np.testing.assert_allclose(k["losses"], t["losses"], rtol=rtol, atol=atol,
                               err_msg=f"{program}: kiln's losses differ from torch's")
    tv, kv = t.get("values", {}), k.get("values", {})
    assert list(kv) == list(tv), f"{program}: the scripts computed different entries"
    for name in tv:
        if name in skip_values:
            continue
        if isinstance(tv[name], (str, bool, int)):
            assert kv[name] == tv[name], f"{program}: {name}: kiln {kv[name]!r}, torch {tv[name]!r}"
            continue
        ta, ka = _as_array(tv[name]), _as_array(kv[name])
        assert ka.shape == ta.shape, f"{program}: {name}: shape {ka.shape} != {ta.shape}"
        np.testing.assert_allclose(ka.astype(np.float64), ta.astype(np.float64), rtol=values_rtol,
                                   atol=values_atol, err_msg=f"{program}: {name}")
    return t, k


def compiled_matches(program: str, eager: dict, t: dict, whole: bool = True, **kwargs) -> dict:
    """The kiln run with its train step under kiln.compile repeats kiln's eager losses; with
    `whole`, no step fell back to eager."""
    if whole:
        with no_compile_fallback():
            return _check_compiled(program, eager, initial_state=_convert_state(t["initial_state"]),
                                   **kwargs)
    return _check_compiled(program, eager, initial_state=_convert_state(t["initial_state"]),
                           **kwargs)


def test_pruning_masks_hooks_and_training_match_torch():
    # every mask equals torch's, random_unstructured's too (kiln draws PyTorch's numbers)
    t, k = same_run("pruning")
    v = k["values"]
    assert v["params_after"] == "bias,weight_orig" and v["buffers_after"] == "weight_mask"
    assert v["history"] == "RandomUnstructured,LnStructured"
    assert v["orig_grad_zero_where_pruned"] and v["zeros_after_training"] > 0
    compiled_matches("pruning", k, t)


def test_swa_and_ema_match_torch():
    t, k = same_run("swa")
    assert k["lrs"] == t["lrs"]                       # CosineAnnealingLR, then SWALR
    assert k["values"]["n_averaged"].item() == 3
    compiled_matches("swa", k, t)


def test_text_classification_matches_torch():
    # random_split's permutation is PyTorch's (kiln draws its numbers): the same split
    t, k = same_run("text_classification")
    assert k["split_sizes"] == t["split_sizes"] == (152, 8) and k["disjoint"]
    assert k["train_indices"] == t["train_indices"]
    assert k["accuracies"] == t["accuracies"] and k["test_acc"] == t["test_acc"]
    assert k["lrs"] == t["lrs"]
    # each batch's ids have their own length: past the recompile limit the step runs eagerly
    # (kiln compiles static shapes); the fixed-shape EmbeddingBag step compiles whole in
    # tests/nn/test_spatial_functional.py
    compiled_matches("text_classification", k, t, whole=False)


def test_checkpointing_same_grads_and_losses_as_torch():
    t, k = same_run("checkpointing")
    assert k["values"]["same_grads_as_plain"] and k["values"]["dropout_recomputed_alike"]
    compiled_matches("checkpointing", k, t)


def test_warmstart_partial_and_meta_loading_match_torch():
    t, k = same_run("warmstart")
    v = k["values"]
    assert v["missing"] == "hidden.weight,hidden.bias,out.weight,out.bias"
    assert v["unexpected"] == "fc2.weight,fc2.bias" and v["strict_error"] is True
    assert v["meta_device"] == "meta" and v["assigned_device"] == "cpu"
    compiled_matches("warmstart", k, t)


def test_sdpa_tutorial_matches_torch():
    t, k = same_run("sdpa")
    assert k["values"]["matches_manual"] and not k["values"]["flash_enabled_inside"]
    compiled_matches("sdpa", k, t)


def test_autograd_function_under_torch_func_matches_torch():
    # sorting, gradients, vmap rules (hand-written and generated), jacrev / jacfwd, grad of
    # grad and the per-sample-gradient training all agree with torch; nothing is compiled
    # (the step is functional: vmap(grad(...)) over functional_call)
    t, k = same_run("func_autograd_function")
    assert len(k["losses"]) == 12


def test_module_hooks_match_torch():
    t, k = same_run("module_hooks")
    v = k["values"]
    assert v["order"] == ",".join(["first", "halve_scale", "clamp_output"] * 2)  # two calls
    assert v["seen"] == "Linear,Gate,Linear,Net" and v["hooks_left"] == 0
    compiled_matches("module_hooks", k, t)


def test_optimizer_step_in_backward_matches_torch():
    # per-parameter Adams stepped by post-accumulate-grad hooks; saved-tensor hooks and
    # save_on_cpu around two of the forwards; not compiled (the tutorial's loop has no step
    # function: the optimizers run inside backward)
    t, k = same_run("optimizer_in_backward")
    assert k["values"]["same_as_plain_loop"] and k["values"]["grads_cleared"]


def test_nlp_bow_ngram_and_cbow_match_torch():
    t, k = same_run("nlp_word_embeddings")
    compiled_matches("nlp_word_embeddings", k, t)


def test_nlp_lstm_tagger_matches_torch():
    # the stepwise and whole-sequence LSTM outputs, the tagger's scores before and after
    # training and its predicted tags are among the values
    t, k = same_run("nlp_lstm_tagger")
    compiled_matches("nlp_lstm_tagger", k, t)


def test_compiling_optimizer_recipes_match_torch():
    # only opt.step() compiled, zero_grad() replacing every .grad between calls (a replay read
    # the first call's gradient before the fix); the tensor-rate + LinearLR half runs eagerly
    # (the scheduler reads the rate into Python: a graph break), so only the first half is
    # required to compile whole
    t, k = same_run("compiling_optimizer")
    assert k["rates"] == t["rates"] and k["values"]["lr_is_tensor"]
    compiled_matches("compiling_optimizer", k, t, whole=False)


def test_introyt_autograd_matches_torch():
    # values only, nothing compiled: the next_functions walk of 2 * sin(a) + 1 (the tensor is
    # the first input of `2 * b`), vector backward, the functional API, accumulation
    t, k = same_run("autograd_yt")
    assert k["values"]["chain"] == t["values"]["chain"]
    assert k["values"]["chain"].endswith("AccumulateGrad:") and k["values"]["leaf_is_a"]


def test_autoencoders_match_torch():
    # linear, bottleneck and convolutional (strided Conv2d, Unflatten, ConvTranspose2d with
    # output_padding) autoencoders; denoised outputs under inference_mode
    t, k = same_run("autoencoders")
    compiled_matches("autoencoders", k, t)


def test_channels_last_tutorial_trains_as_torch():
    # memory_format tutorial: channels-last strides from every way of making a tensor (empty's
    # memory_format and empty_like's preserve were row-major), a channels-last CNN trained on
    # the transforms tutorial's one-hot targets (scatter_ with a 0-d index raised)
    t, k = same_run("channels_last_tutorial")
    v = k["values"]
    assert v["strides_made"] == str(((3072, 1, 96, 3),) * 4) and v["is_cl"] and v["weight_cl"]
    compiled_matches("channels_last_tutorial", k, t)


def test_forward_ad_tutorial_matches_torch():
    # forward_ad_usage tutorial: dual tensors, dual parameters through functional_call, a custom
    # Function's jvp, and `import functorch as ft` (ft.jvp over make_functional_with_buffers),
    # which kiln run could not import
    t, k = same_run("forward_ad_tutorial")
    v = k["values"]
    assert v["tangent_kept"] and v["tangent_copied"] and v["tangent_gone"]
    assert v["module_matches_call"] and v["gradcheck"]
    compiled_matches("forward_ad_tutorial", k, t)


def test_saved_tensors_hooks_tutorial_matches_torch():
    # grad_fn._saved_self/_other are the inputs, _saved_result a new tensor equal to the output;
    # packs to an index, a (tensor, closure) pair, a repr evaluated back; hooks saving to disk
    # with torch.save/torch.load (a file deleted on first unpack fails the second access); the
    # training loop runs eagerly under kiln.compile (a graph break: a replay would call no
    # pack hook)
    t, k = same_run("saved_tensors_hooks")
    v = k["values"]
    assert v["saved_self_is_a"] and v["saved_other_is_b"] and v["saved_result_equal"]
    assert not v["saved_result_is_y"] and v["double_access"] == "failed"
    assert v["events"] == "pack(5,),pack(5,),unpack(5,),unpack(5,)"
    assert v["files_during_training"] == "3,3,3,3,3,3" and v["files_after_training"] == 0
    compiled_matches("saved_tensors_hooks", k, t, whole=False)


def test_sparse_adagrad_tutorial_and_sparse_embeddings_match_torch():
    # Adagrad by hand on a sparse COO gradient (coalesce, _indices/_values, sparse_mask, add_
    # of a sparse tensor with alpha), the masked-tensor form of it, the dense form; then
    # Embedding(sparse=True) under Adagrad and SparseAdam. kiln's sparse embedding is a custom
    # Function: under kiln.compile the step runs eagerly (its backward is Python)
    t, k = same_run("sparse_adagrad")
    v = k["values"]
    assert v["same_as_sparse"] and v["same_as_dense"] and v["grad_is_sparse"]
    assert v["sparse_equals_dense"]
    compiled_matches("sparse_adagrad", k, t, whole=False)


def test_data_loading_tutorial_matches_torch():
    # a CSV-backed Dataset of dict samples, NumPy transforms (np.random crops) and a shuffling
    # DataLoader collating dicts into float64 batches: the shuffle is PyTorch's, so the same
    # batches train the landmark CNN to torch's losses
    t, k = same_run("data_loading")
    v = k["values"]
    assert v["sample_types"] == "Tensor,float64"
    assert v["batch_shapes"] == ";".join(["(4, 3, 20, 20)(4, 2, 2)float64"] * 2)
    compiled_matches("data_loading", k, t)


def test_reasoning_about_shapes_and_default_device_match_torch():
    # meta-device shapes (a convolution of a 2**10 x 3 x 2**16 x 2**16 input, forward hooks on
    # a LeNet built under `with torch.device("meta")`), set_default_device, then the LeNet
    # materialized with to_empty + reset_parameters and trained
    t, k = same_run("meta_shapes")
    v = k["values"]
    assert v["large"] == "(1024, 5, 65535, 65535) meta" and v["out_meta"] == "(1024, 10) meta"
    assert v["default_meta"] == "meta meta" and v["devices"] == "meta cpu cpu"
    compiled_matches("meta_shapes", k, t)


def test_dynamic_quantization_tutorial_matches_torch():
    # the LSTM word LM trained, sampled from, then quantize_dynamic({LSTM, Linear}); the
    # quantized model's state_dict was empty (its file 128 bytes): it now holds the int8
    # weights under torch's keys, so the saved file shrinks as torch's does. kiln's quantized
    # LSTM agrees with torch's to float32 rounding of its gates
    t, k = same_run("dynamic_quantization", skip_values=("quantized_repr", "size_ratio"),
                    values_atol=1e-5)
    v = k["values"]
    assert v["quantized_repr"].replace("kiln.", "torch.") == t["values"]["quantized_repr"]
    assert 0.2 < v["size_ratio"] < 0.5 and 0.2 < t["values"]["size_ratio"] < 0.5
    assert abs(v["quantized_loss"] - v["float_loss"]) < 1e-2
    compiled_matches("dynamic_quantization", k, t)


def test_tuning_guide_matches_torch():
    # `torch.fx.experimental.optimization` was missing (kiln.fx.experimental.optimization.fuse
    # now folds the batch norms) and `torch.jit.trace(model, [x])` passed the list as one
    # argument; the bfloat16 autocast outputs agree to bfloat16 rounding
    t, k = same_run("tuning_guide", skip_values=("bf16",), torch_kwargs={"backend": "eager"})
    np.testing.assert_allclose(k["values"]["bf16"].numpy(), t["values"]["bf16"].numpy(),
                               rtol=2e-2, atol=2e-3)
    assert not k["values"]["fused_has_bn"] and k["values"]["gelu_matches"]
    compiled_matches("tuning_guide", k, t)


def test_visualizing_gradients_tutorial_matches_torch():
    # forward hooks registering tensor hooks on each leaf module's output; the gradients they
    # collect (in backward order) and their per-layer means agree with torch's. Under
    # kiln.compile the step runs eagerly: the hooks append to Python lists, which a replay
    # would not do (kiln.compile says so)
    t, k = same_run("visualizing_gradients")
    assert k["values"]["layer_idx_nobn"] == ",".join(str(i) for i in range(9, -1, -1))
    compiled_matches("visualizing_gradients", k, t, whole=False)


def test_imbalanced_data_tutorial_matches_torch():
    # NumPy undersampling of a Dataset's arrays, a WeightedRandomSampler over float64 weights
    # (kiln draws PyTorch's multinomial numbers: the same batches), a weighted NLLLoss, and a
    # confusion matrix built by 0-d tensor indexing
    t, k = same_run("imbalanced_data")
    assert k["values"]["train_counts"] == "[ 1  1  1  1  1 12 12 12 12 12]"
    assert k["values"]["sampled_batch"] == t["values"]["sampled_batch"]
    compiled_matches("imbalanced_data", k, t)
