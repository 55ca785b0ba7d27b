"""`torch.Stream` and `torch.Event`: device-generic streams and events. On cuda they are
kiln.cuda's (CuPy's streams and events); the CPU has one stream that runs everything in
order, where waiting is nothing to do and events do not exist, as in PyTorch."""

from __future__ import annotations

from kiln.runtime.device import Device, cuda_is_available

_TYPE_CODES = {"cpu": 0, "cuda": 1}         # PyTorch's DeviceType numbers, as .device_type


def _device(device) -> Device:
    if device is None:
        return Device("cuda", 0) if cuda_is_available() else Device("cpu")
    dev = device if isinstance(device, Device) else Device(device)
    if dev.type not in _TYPE_CODES:
        raise RuntimeError(f"kiln.Stream: no streams on device type {dev.type!r}")
    return dev


class Stream:
    """A queue of work on one device (`with kiln.Stream("cuda"): ...`)."""

    def __init__(self, device=None, *, priority: int = 0):
        self.device = _device(device)
        self.priority = priority
        self._cuda = None
        if self.device.type == "cuda":
            from kiln.cuda.streams import Stream as CudaStream
            self._cuda = CudaStream(self.device, priority)

    @property
    def device_type(self) -> int:
        return _TYPE_CODES[self.device.type]

    @property
    def device_index(self) -> int:
        return -1 if self.device.index is None else self.device.index

    @property
    def stream_id(self) -> int:
        return 0 if self._cuda is None else self._cuda.cuda_stream

    def query(self) -> bool:
        return True if self._cuda is None else self._cuda.query()

    def synchronize(self) -> None:
        if self._cuda is not None:
            self._cuda.synchronize()

    def wait_event(self, event: "Event") -> None:
        if self._cuda is not None:
            self._cuda.wait_event(event._cuda_event())

    def wait_stream(self, stream: "Stream") -> None:
        if self._cuda is not None:
            self._cuda.wait_stream(stream._cuda)

    def record_event(self, event: "Event | None" = None) -> "Event":
        event = Event(self.device) if event is None else event
        event.record(self)
        return event

    def __enter__(self) -> "Stream":
        if self._cuda is not None:
            self._cuda.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._cuda is not None:
            self._cuda.__exit__(*exc)

    def __eq__(self, other) -> bool:
        return isinstance(other, Stream) and (self.device, self.stream_id) == \
            (other.device, other.stream_id)

    def __hash__(self) -> int:
        return hash((str(self.device), self.stream_id))

    def __repr__(self) -> str:
        return (f"kiln.Stream device_type={self.device.type}, device_index={self.device_index}, "
                f"stream_id={self.stream_id}")


class Event:
    """A point in a stream's work (cuda only: the CPU backend has no events, as PyTorch's)."""

    def __init__(self, device=None, *, enable_timing: bool = False, blocking: bool = False,
                 interprocess: bool = False):
        self.device = _device(device)
        self._event = None
        if self.device.type == "cuda":
            from kiln.cuda import Event as CudaEvent
            self._event = CudaEvent(enable_timing, blocking, interprocess)

    def _cuda_event(self):
        if self._event is None:
            raise RuntimeError("cpu backend doesn't support events.")
        return self._event

    def record(self, stream: Stream | None = None) -> None:
        self._cuda_event().record(None if stream is None else stream._cuda)

    def wait(self, stream: Stream | None = None) -> None:
        self._cuda_event().wait(None if stream is None else stream._cuda)

    def query(self) -> bool:
        return True if self._event is None else self._event.query()

    def synchronize(self) -> None:
        if self._event is not None:
            self._event.synchronize()

    def elapsed_time(self, end_event: "Event") -> float:
        return self._cuda_event().elapsed_time(end_event._cuda_event())

    def __repr__(self) -> str:
        index = -1 if self.device.index is None else self.device.index
        return f"kiln.Event device_type={self.device.type}, device_index={index}"
