"""Graph -> Graph rewrites: cleanup, forward/backward partition, fusion, memory planning.

`decompose` (primitives kept for eager speed, such as batch norm's, rewritten into fusible ones
before fusing), `cleanup` (dce, cse, fold_constants, simplify, optimize), `partition` (min-cut forward/backward
split of a joint graph), `layout` (a matmul read only transposed produces the transpose; fusion
applies it first), `matmul_sums` (a sum of thin matmuls, as a weight used at every step of a
loop gets for its gradient, becomes one matmul of concatenated operands), `slice_sinking` (an
elementwise result read only in disjoint slices is computed per slice), `pad_sums` (a sum of
zero-padded pieces side by side is their concatenation), `stack_reshapes` (a concatenation of
reshaped steps, as `stack` traces, is a reshape of the steps' concatenation), `fusion` (a
Schedule of fused kernels and extern calls; `split_gathers`) and `memory` (the liveness plans
executors run by, and which write-backs may overwrite their source); `pipeline.STEPS` is the
compiler's pipeline, run by `pipeline.compile_passes`. Each pass is a named function from plain
data to plain data.
"""
