"""torch.cuda's streams on CuPy's: `Stream`, `stream(s)` (a `with` block whose work, kiln's
kernels and CuPy's alike, is queued on `s`), `current_stream`, `default_stream`,
`set_stream`, `ExternalStream`.

kiln launches every kernel on CuPy's current stream (kiln.runtime.triton_launch reads
`cupy.cuda.get_current_stream()`), so making a stream current is all `stream(s)` has to do.
Work on two streams runs in any order unless one waits for the other: `s.wait_stream(t)` (or
an Event's `wait`), as in PyTorch.
"""

from __future__ import annotations

import sys

from kiln.runtime.device import cuda_is_available, cupy_module


def _cupy(what: str):
    if not cuda_is_available():
        raise RuntimeError(f"torch.cuda.{what} requires CUDA support: no CUDA GPU is "
                           "available (kiln.cuda.is_available() is False)")
    return cupy_module()


class Stream:
    """A CUDA stream (torch.cuda.Stream): `with kiln.cuda.stream(s): ...` queues work on it."""

    def __init__(self, device=None, priority: int = 0, **kwargs):
        cp = _cupy("Stream")
        stream = kwargs.pop("_wrap", None)
        if stream is None:
            from kiln.cuda import _index
            with cp.cuda.Device(_index(device, "Stream")):
                stream = cp.cuda.Stream(non_blocking=True)
        self._stream = stream
        self.priority = priority

    @property
    def cuda_stream(self) -> int:
        """The cudaStream_t handle, as an int."""
        return int(self._stream.ptr)

    @property
    def device(self):
        from kiln.runtime.device import Device
        return Device("cuda", int(getattr(self._stream, "device_id", 0)))

    def wait_event(self, event) -> None:
        """Work queued on this stream from now on waits for `event`'s recorded work."""
        self._stream.wait_event(event._event)

    def wait_stream(self, stream: "Stream") -> None:
        """Work queued on this stream from now on waits for what `stream` has queued."""
        self.wait_event(stream.record_event())

    def record_event(self, event=None):
        """Record `event` (a new one if None) at this point of the stream; returns it."""
        from kiln.cuda import Event
        event = Event() if event is None else event
        event.record(self)
        return event

    def query(self) -> bool:
        """Whether everything queued on the stream has finished."""
        return bool(self._stream.done)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def __eq__(self, other) -> bool:
        return isinstance(other, Stream) and self.cuda_stream == other.cuda_stream

    def __hash__(self) -> int:
        return hash(self.cuda_stream)

    def __enter__(self) -> "Stream":
        self._stream.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._stream.__exit__(*exc)

    def __repr__(self) -> str:
        return f"<kiln.cuda.Stream device={self.device} cuda_stream={hex(self.cuda_stream)}>"


class ExternalStream(Stream):
    """A stream made elsewhere (a cudaStream_t handle as an int)."""

    def __init__(self, stream_ptr: int, device=None):
        cp = _cupy("ExternalStream")
        super().__init__(_wrap=cp.cuda.ExternalStream(int(stream_ptr)))


def current_stream(device=None) -> Stream:
    """The stream kiln's and CuPy's work is queued on now."""
    cp = _cupy("current_stream")
    return Stream(_wrap=cp.cuda.get_current_stream())


def default_stream(device=None) -> Stream:
    """The device's default (null) stream."""
    cp = _cupy("default_stream")
    return Stream(_wrap=cp.cuda.Stream.null)


def set_stream(stream: Stream) -> None:
    """Make `stream` current until another is set (prefer `with kiln.cuda.stream(s)`)."""
    if stream is not None:
        stream._stream.use()


class StreamContext:
    """`with kiln.cuda.stream(s):` work inside is queued on `s`; None changes nothing."""

    def __init__(self, stream: Stream | None):
        self.stream = stream

    def __enter__(self):
        if self.stream is not None:
            self.stream.__enter__()
        return self.stream

    def __exit__(self, *exc) -> None:
        if self.stream is not None:
            self.stream.__exit__(*exc)


def stream(stream: Stream | None) -> StreamContext:
    return StreamContext(stream)


def is_current_stream_capturing() -> bool:
    """Whether the current stream is capturing a CUDA graph (False without a GPU). Cheap when
    CuPy was never imported (no cuda tensor exists then): optimizers ask at every step."""
    if "cupy" not in sys.modules or not cuda_is_available():
        return False
    return bool(cupy_module().cuda.get_current_stream().is_capturing())
