"""`torch._C._profiler`: the profiler's experimental options, as user scripts construct them.

kiln's profiler records host-side ops and memory (kiln/profiler/); the options PyTorch passes
to its Kineto/CUPTI back end (per-kernel GPU metrics, performance counters) have no counterpart,
so an `_ExperimentalConfig` is kept as given and its options are accepted, not acted on.
"""

from __future__ import annotations

_OPTIONS = {"profiler_metrics": (), "profiler_measure_per_kernel": False, "verbose": False,
            "performance_events": (), "enable_cuda_sync_events": False,
            "adjust_profiler_step": False, "disable_external_correlation": False,
            "profile_all_threads": False, "capture_overload_names": False,
            "record_python_gc_info": False, "expose_kineto_event_metadata": False,
            "custom_profiler_config": "", "adjust_timestamps": False, "trace_only": False}


class _ExperimentalConfig:
    """`profile(experimental_config=_ExperimentalConfig(verbose=True))`: PyTorch's option
    names, checked; kiln's profiler has no back end for them."""

    def __init__(self, **options):
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise TypeError(f"_ExperimentalConfig got unexpected options {unknown}; it takes "
                            f"{sorted(_OPTIONS)}")
        for name, default in _OPTIONS.items():
            setattr(self, name, options.get(name, default))

    def __repr__(self) -> str:
        changed = {k: getattr(self, k) for k, v in _OPTIONS.items() if getattr(self, k) != v}
        return f"_ExperimentalConfig({', '.join(f'{k}={v!r}' for k, v in changed.items())})"
