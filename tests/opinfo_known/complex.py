"""Known departures from PyTorch's OpInfo samples on complex64 tensors (every op, the complex64 mode).

As the other lists: `tests/test_opinfo.py` fails when an op not listed here departs from torch
in this mode, and when a listed one no longer does (then delete its line)."""

COMPARE = {}

KNOWN = {
    ('as_strided.partial_views', 'complex64'): (
        "n/a: the sample is a view at storage offset 10 of a larger tensor, read by absolute "
        "storage offsets; to_kiln copies only the view's elements"),
    ('chalf', 'complex64'): 'n/a: no complex32, so no Tensor.chalf (tests/api_exclusions.py)',
    ('jiterator_2inputs_2outputs', 'complex64'): 'n/a: CUDA-only (torch.cuda.jiterator)',
    ('jiterator_4inputs_with_extra_args', 'complex64'): 'n/a: CUDA-only (torch.cuda.jiterator)',
    ('jiterator_binary', 'complex64'): 'n/a: CUDA-only (torch.cuda.jiterator)',
    ('jiterator_binary_return_by_ref', 'complex64'): 'n/a: CUDA-only (torch.cuda.jiterator)',
    ('jiterator_unary', 'complex64'): 'n/a: CUDA-only (torch.cuda.jiterator)',
}
