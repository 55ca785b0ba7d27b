"""Public names of torch 2.13's nn / optim / utils.data namespaces that kiln leaves out on
purpose, each with the reason. tests/nn/test_nn_api_coverage.py counts the rest.

Names that are not PyTorch's own classes or functions (typing aliases such as `Optional`,
constants, doc-string fragments) are not counted at all; see `public_names` in the test.
"""

EXCLUSIONS: dict[str, dict[str, str]] = {
    "nn": {
        "Container": "deprecated since PyTorch 0.4 (warns on use); nn.Module replaces it",
    },
    "nn.functional": {
        "assert_int_or_pair": "internal argument check of torch's functional module",
        "boolean_dispatch": "TorchScript helper that picks an overload by a bool argument",
        "grouped_mm": "grouped low-precision GPU matmul for mixture-of-experts kernels",
        "scaled_grouped_mm": "FP8 scaled grouped matmul (GPU kernels kiln does not target)",
        "scaled_mm": "FP8 scaled matmul (GPU kernels kiln does not target)",
        "ScalingType": "enum of scaled_mm's scaling modes",
        "SwizzleType": "enum of scaled_mm's layout swizzles",
    },
    "nn.init": {},
    "nn.utils": {},
    "nn.utils.rnn": {
        "PackedSequence_": "the NamedTuple base of PackedSequence, an implementation detail",
        "bind": "internal helper of torch's rnn utils",
        "copy_method_params": "internal helper of torch's rnn utils",
    },
    "optim": {
        "swap_in_optimizer_params_and_state": "internal helper for swapping parameter "
                                              "tensors in place (torch.__future__ option)",
    },
    "optim.lr_scheduler": {},
    "utils.data": {
        "DFIterDataPipe": "torchdata DataPipes: deprecated in PyTorch and removed from "
                          "torchdata; typical scripts use Dataset/DataLoader",
        "DataChunk": "DataPipes (deprecated), as DFIterDataPipe",
        "IterDataPipe": "DataPipes (deprecated), as DFIterDataPipe",
        "MapDataPipe": "DataPipes (deprecated), as DFIterDataPipe",
        "functional_datapipe": "DataPipes (deprecated), as DFIterDataPipe",
        "guaranteed_datapipes_determinism": "DataPipes (deprecated), as DFIterDataPipe",
        "non_deterministic": "DataPipes (deprecated), as DFIterDataPipe",
        "argument_validation": "DataPipes' runtime type checking (deprecated)",
        "runtime_validation": "DataPipes' runtime type checking (deprecated)",
        "runtime_validation_disabled": "DataPipes' runtime type checking (deprecated)",
    },
}
