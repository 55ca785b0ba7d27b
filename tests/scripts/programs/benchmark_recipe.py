"""The "PyTorch Benchmark" recipe (torch.utils.benchmark), sections 1 and 3 to 7, on small
inputs and short time budgets: batched dot two ways, Timer.timeit and blocked_autorange,
Compare over sizes and thread counts (trimmed, colorized), A/B results with `env` through
pickle, and the recipe's Fuzzer feeding Timers. Times differ between runs and libraries, so
`values` holds what does not: the check, the printed labels and layout, the fuzzed parameters,
layouts and tensors."""
import pickle
import re
from itertools import product

import numpy as np
import torch
import torch.utils.benchmark as benchmark
from torch.utils.benchmark import Fuzzer, FuzzedParameter, FuzzedTensor


def batched_dot_mul_sum(a, b):
    '''Computes batched dot by multiplying and summing'''
    return a.mul(b).sum(-1)


def batched_dot_bmm(a, b):
    '''Computes batched dot by reducing to ``bmm``'''
    a = a.reshape(-1, 1, a.shape[-1])
    b = b.reshape(-1, b.shape[-1], 1)
    return torch.bmm(a, b).flatten(-3)


def layout(table: str) -> str:
    """A Compare table without what depends on the times: numbers, colors, widths (spaces,
    lengths of rules) and the unit."""
    table = re.sub(r"\x1b\[[0-9;]*m", "", table)
    table = re.sub(r"[0-9.]+(?= *(\||$))", "#", table, flags=re.M)
    table = re.sub(r"Times are in .*", "Times are in #", table)
    return re.sub(r"-+", "-", table.replace(" ", ""))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    values = {}
    x = torch.randn(100, 64)
    values["mul_sum_equals_bmm"] = bool(batched_dot_mul_sum(x, x).allclose(batched_dot_bmm(x, x)))

    # the recipe's setup imports from __main__; a test's __main__ is pytest, so globals
    t0 = benchmark.Timer(stmt='batched_dot_mul_sum(x, x)', setup='y = x.clone()',
                         globals={'x': x, 'batched_dot_mul_sum': batched_dot_mul_sum})
    m = t0.timeit(10)
    lines = repr(m).splitlines()
    values["timeit_repr"] = "\n".join(lines[1:3] + lines[4:])
    t1 = benchmark.Timer(stmt='batched_dot_bmm(x, x)', globals={'x': x, 'batched_dot_bmm':
                                                                  batched_dot_bmm},
                         num_threads=2, label='Multithreaded batch dot',
                         sub_label='Implemented using bmm')
    m1 = t1.blocked_autorange(min_run_time=0.01)
    values["blocked_title"] = repr(m1).splitlines()[1]
    values["blocked_mean_positive"] = bool(m1.mean > 0 and m1.median > 0)

    results = []
    sizes = [1, 16, 64]
    for b, n in product(sizes, sizes):
        x = torch.ones((b, n))
        for num_threads in [1, 2]:
            for stmt, description in (('batched_dot_mul_sum(x, x)', 'mul/sum'),
                                      ('batched_dot_bmm(x, x)', 'bmm')):
                results.append(benchmark.Timer(
                    stmt=stmt, globals={'x': x, 'batched_dot_mul_sum': batched_dot_mul_sum,
                                        'batched_dot_bmm': batched_dot_bmm},
                    num_threads=num_threads, label='Batched dot', sub_label=f'[{b}, {n}]',
                    description=description).blocked_autorange(min_run_time=0.003))
    compare = benchmark.Compare(results)
    values["compare_layout"] = layout(str(compare))
    compare.trim_significant_figures()
    compare.colorize()
    values["compare_colored_layout"] = layout(str(compare))

    ab_test_results = []
    for env in ('environment A: mul/sum', 'environment B: bmm'):
        for b, n in ((1, 1), (64, 16)):
            x = torch.ones((b, n))
            dot_fn = (batched_dot_mul_sum if env == 'environment A: mul/sum' else
                      batched_dot_bmm)
            m = benchmark.Timer(stmt='batched_dot(x, x)', globals={'x': x, 'batched_dot': dot_fn},
                                num_threads=1, label='Batched dot', description=f'[{b}, {n}]',
                                env=env).blocked_autorange(min_run_time=0.003)
            ab_test_results.append(pickle.dumps(m))
    ab_results = [pickle.loads(i) for i in ab_test_results]
    compare = benchmark.Compare(ab_results)
    compare.trim_significant_figures()
    values["ab_layout"] = layout(str(compare))
    round_tripped_results = pickle.loads(pickle.dumps(results))
    values["pickle_round_trip"] = (str(benchmark.Compare(results))
                                   == str(benchmark.Compare(round_tripped_results)))

    example_fuzzer = Fuzzer(
        parameters=[FuzzedParameter('k0', minval=1, maxval=10000, distribution='loguniform'),
                    FuzzedParameter('k1', minval=1, maxval=10000, distribution='loguniform')],
        tensors=[FuzzedTensor('x', size=('k0', 'k1'), min_elements=128, max_elements=100000,
                              probability_contiguous=0.6)],
        seed=0)
    results, k0, k1, contiguous, sums = [], [], [], [], []
    for tensors, tensor_params, params in example_fuzzer.take(10):
        sub_label = (f"{params['k0']:<6} x {params['k1']:<4} "
                     f"{'' if tensor_params['x']['is_contiguous'] else '(discontiguous)'}")
        k0.append(params['k0'])
        k1.append(params['k1'])
        contiguous.append(int(tensors['x'].is_contiguous()))
        sums.append(float(batched_dot_mul_sum(tensors['x'], tensors['x']).sum()))
        results.append(benchmark.Timer(
            stmt='batched_dot_mul_sum(x, x)',
            globals=dict(tensors, batched_dot_mul_sum=batched_dot_mul_sum),
            label='Batched dot', sub_label=sub_label,
            description='mul/sum').blocked_autorange(min_run_time=0.003))
    compare = benchmark.Compare(results)
    compare.trim_significant_figures()
    values["fuzzed_layout"] = layout(str(compare))
    values["fuzzed_k0"], values["fuzzed_k1"] = np.array(k0), np.array(k1)
    values["fuzzed_contiguous"] = np.array(contiguous)
    values["fuzzed_dot_sums"] = np.array(sums)
    return {"losses": [], "values": values}
