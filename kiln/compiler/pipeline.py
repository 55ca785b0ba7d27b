"""The stages after a trace: the passes, lowering and kernel builds that turn a traced graph
into an executor for one target (`compile_program`), and the choice of that target."""

from __future__ import annotations

import functools
import warnings

from kiln.compiler.outputs import output_roots
from kiln.runtime.executor import ArrayExecutor
from kiln.tracer.errors import user_stacklevel


def kernel_target(backend: str, device) -> str:
    """What a backend generates on `device`: "c", "triton" or "numpy" (no kernels).

    `auto` generates Triton kernels for CUDA tensors and C kernels for CPU tensors (the NumPy
    executor when no C compiler works, with a one-time message saying why); `c` asks for C
    kernels, `triton` for Triton kernels (Triton's interpreter on CPU memory); `numpy` never
    fuses.
    """
    if backend == "numpy":
        return "numpy"
    if device.type == "cpu" and backend in ("auto", "c"):
        from kiln.runtime import c_build
        problem = c_build.compiler_problem()
        if problem is not None:
            _note_no_compiler(problem)
            return "numpy"
        return "c"
    return "triton"


def compile_program(graph, joint, target: str, xp, stage: list | None = None) -> tuple:
    """Compile traced `graph` (`joint`: its JointInfo, or None) for `target`: the pipeline's
    named steps (`kiln.passes.pipeline.STEPS`), ending in `lower_schedule(schedule, target)`.

    Returns:
        (CompiledProgram, forward executor, backward executor or None). What the passes make
        of the graph and its lowered programs (C kernels included) come from the program cache
        when this graph was compiled before, and go there when not.
    """
    # codegen and the passes load on the first compile, not at `import kiln` (~40 ms)
    from kiln import program_cache
    from kiln.codegen.lower import lower_schedule
    from kiln.passes import pipeline
    lower = None if target == "numpy" else functools.partial(lower_schedule, target=target)
    key = program_cache.program_key(graph, joint, target)
    found = program_cache.load(key, graph, None if joint is None else joint.num_primals)
    if found is not None:
        compiled, lowered = found
        for name, part in (("forward", compiled.forward), ("backward", compiled.backward)):
            if part is not None and part.schedule is not None:
                part.lowered = lowered.get(name)
                if part.lowered is None:        # Triton kernels are not kept: lower again
                    pipeline.lower_part(part, lower)
    else:
        if stage is not None and lower is not None:
            stage[0] = f"optimizing the graph and generating {target} kernels"
        # a GPU program's convolutions become implicit-GEMM kernels at lowering
        # (codegen/conv.py), which looks for their unfold + matmul, not the CPU's products
        compiled = pipeline.compile_passes(graph, joint, fused=target != "numpy", lower=lower,
                                           conv_products=target != "triton",
                                           thin_kept=_thin_kept if target == "c" else None,
                                           pieces=target == "c")
    if stage is not None and lower is not None:
        stage[0] = f"building {target} kernels"
    executors = {"forward": build_executor(compiled.forward, xp)}
    if compiled.backward is not None:
        executors["backward"] = build_executor(compiled.backward, xp)
    if compiled.forward.output_roots is None:
        compiled.forward.output_roots = output_roots(compiled.forward.graph)
    if found is None:
        program_cache.store(key, compiled, {part: getattr(ex, "rendered", None)
                                            for part, ex in executors.items()})
    return compiled, executors["forward"], executors.get("backward")


def _thin_kept(m: int, k: int, n: int, dtype) -> bool:
    """The thin products the C backend's executor computes with its own kernel as they are
    (`kiln.runtime.gemm_cpu`), which the layout pass then leaves untransposed."""
    from kiln.runtime import gemm_cpu
    return dtype.name == "float32" and gemm_cpu.takes(m, k, n)


def lower_program(schedule, target: str):
    """The LoweredProgram (with its memory plan) of a fused `schedule` for `target` ("c" or
    "triton"): the pipeline's last steps, for running a schedule built by hand (tests)."""
    from kiln.codegen.lower import lower_schedule
    from kiln.passes import pipeline
    part = pipeline.CompiledPart(schedule.graph, [], schedule)
    return pipeline.lower_part(part, functools.partial(lower_schedule, target=target)).lowered


def build_executor(part, xp):
    """The executor of one compiled program (a `CompiledPart`): its lowered program, or the
    NumPy (CuPy) executor of its optimized graph when it was not fused."""
    if part.lowered is None:
        from kiln.passes.memory import plan_nodes       # see compile_program
        return ArrayExecutor(part.graph, xp, plan_nodes(part.graph))
    from kiln.runtime.schedule_executor import ScheduleExecutor     # see compile_program
    return ScheduleExecutor(part.lowered, xp)


_NO_COMPILER_NOTED: list = []


def _note_no_compiler(problem: str) -> None:
    """Say once per process that compiled CPU code runs on NumPy, and why."""
    if not _NO_COMPILER_NOTED:
        _NO_COMPILER_NOTED.append(problem)
        warnings.warn(f"kiln.compile: no working C compiler, so compiled functions run on the "
                      f"NumPy executor on the CPU: {problem}", stacklevel=user_stacklevel())
