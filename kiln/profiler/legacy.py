"""`torch.autograd.profiler`'s spelling of the profiler: `profile(enabled=True, use_cuda=...)`
and `record_function`, over kiln.profiler's recorder."""

from __future__ import annotations

from kiln.profiler.events import EventList
from kiln.profiler.profile import ProfilerActivity
from kiln.profiler.profile import profile as _profile
from kiln.profiler.recorder import record_function  # noqa: F401  (torch.autograd.profiler's)


class profile(_profile):
    """torch.autograd.profiler.profile: records from `__enter__` to `__exit__`; `enabled=False`
    records nothing. Results as kiln.profiler.profile's (`key_averages()`, `table()`,
    `export_chrome_trace`, `function_events`)."""

    def __init__(self, enabled: bool = True, *, use_cuda: bool = False, use_device=None,
                 record_shapes: bool = False, with_flops: bool = False,
                 profile_memory: bool = False, with_stack: bool = False,
                 with_modules: bool = False, use_kineto: bool = False, use_cpu: bool = True,
                 experimental_config=None, acc_events: bool = False,
                 custom_trace_id_callback=None, post_processing_timeout_s=None,
                 activity_filters=None):
        activities = [ProfilerActivity.CPU]
        if use_cuda or (use_device or "").startswith("cuda"):
            activities.append(ProfilerActivity.CUDA)
        super().__init__(activities=activities, record_shapes=record_shapes,
                         profile_memory=profile_memory, with_stack=with_stack,
                         with_flops=with_flops, with_modules=with_modules)
        self.enabled = enabled

    def __enter__(self) -> profile:
        if self.enabled:
            self.start()
        return self

    def __exit__(self, *exc) -> bool:
        if self.enabled:
            self.stop()
        return False

    @property
    def function_events(self) -> EventList:
        return self.events()

    def table(self, sort_by: str | None = None, row_limit: int = 100, **kwargs) -> str:
        """The table of every event (not averaged), as torch.autograd.profiler's."""
        return self.events().table(sort_by=sort_by, row_limit=row_limit, **kwargs)

    def total_average(self):
        return self.events().total_average()

    def __str__(self) -> str:
        return self.table()
