"""Key-value stores (torch.distributed's Store, HashStore, FileStore, PrefixStore, TCPStore):
the small shared dictionaries rendezvous code and user scripts use to exchange bytes.

Every store keeps `bytes` values under `str` keys with torch's semantics: `get` and `wait` of a
missing key wait for it and raise `DistStoreError` after the timeout, `add` keeps a decimal
counter, `compare_set` swaps only on a match. The base class writes each operation as one
atomic update of a dict (`_update`); a store only says how it makes an update atomic:
`HashStore` with a lock (one process; it also keeps torch's queues), `FileStore` with an
exclusive `flock` on a file that processes on one machine share. kiln has no network
transport of its own, so `TCPStore` only explains what to use instead.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import time
from datetime import timedelta

from kiln.distributed.errors import DistStoreError, QueueEmptyError

_STORE_TIMEOUT = timedelta(minutes=5)            # torch's stores default to five minutes
_POLL_S = 0.01


def _as_bytes(what: str, value) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return bytes(value)
    raise TypeError(f"{what}: a store value must be str or bytes, got {type(value).__name__}")


def _seconds(timeout) -> float:
    return timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)


class Store:
    """The key-value store interface (torch.distributed.Store). Subclasses implement
    `_update(change)`: run `change(data)` on the store's dict atomically, return its result."""

    def __init__(self, timeout: timedelta = _STORE_TIMEOUT):
        self._timeout = timeout

    def _update(self, change):
        raise NotImplementedError(f"{type(self).__name__} does not implement the Store methods")

    # ------------------------------------------------------------------ timeouts
    @property
    def timeout(self) -> timedelta:
        return self._timeout

    def set_timeout(self, timeout: timedelta) -> None:
        self._timeout = timeout

    def _wait_for(self, what: str, keys: list[str], timeout=None) -> None:
        """Poll until every key of `keys` is set; DistStoreError after the timeout."""
        limit = _seconds(self._timeout if timeout is None else timeout)
        deadline = time.monotonic() + limit
        while not self._update(lambda data: all(k in data for k in keys)):
            if time.monotonic() >= deadline:
                missing = self._update(lambda data: [k for k in keys if k not in data])
                raise DistStoreError(f"{type(self).__name__}.{what}: timed out after {limit:g} s "
                                     f"waiting for key(s) {missing} to be set")
            self._sleep()

    def _sleep(self) -> None:
        time.sleep(_POLL_S)

    # ------------------------------------------------------------------ the API
    def set(self, key: str, value) -> None:
        value = _as_bytes("Store.set", value)
        self._update(lambda data: data.__setitem__(key, value))

    def get(self, key: str) -> bytes:
        """The value of `key`, waiting for it to be set (up to the store's timeout)."""
        self._wait_for("get", [key])
        return self._update(lambda data: data[key])

    def multi_get(self, keys: list[str]) -> list[bytes]:
        self._wait_for("multi_get", list(keys))
        return self._update(lambda data: [data[k] for k in keys])

    def multi_set(self, keys: list[str], values: list) -> None:
        if len(keys) != len(values):
            raise ValueError(f"Store.multi_set: {len(keys)} keys but {len(values)} values")
        pairs = [(k, _as_bytes("Store.multi_set", v)) for k, v in zip(keys, values)]
        self._update(lambda data: data.update(pairs))

    def add(self, key: str, amount: int) -> int:
        """Add `amount` to the integer counter `key` (0 if missing); returns the new value."""
        def change(data):
            old = data.get(key, b"0")
            try:
                value = int(old) + int(amount)
            except ValueError:
                raise ValueError(f"Store.add: the value of key {key!r} is {old!r}, not an "
                                 "integer counter") from None
            data[key] = str(value).encode()
            return value
        return self._update(change)

    def append(self, key: str, value) -> None:
        value = _as_bytes("Store.append", value)
        self._update(lambda data: data.__setitem__(key, data.get(key, b"") + value))

    def compare_set(self, key: str, expected_value, desired_value) -> bytes:
        """Set `key` to `desired_value` if its value is `expected_value` (or if it is missing
        and `expected_value` is empty); returns the value it has afterwards, or
        `expected_value` when the key is missing and was not set (as torch's stores do)."""
        expected = _as_bytes("Store.compare_set", expected_value)
        desired = _as_bytes("Store.compare_set", desired_value)

        def change(data):
            if key not in data:
                if expected:
                    return expected
            elif data[key] != expected:
                return data[key]
            data[key] = desired
            return desired
        return self._update(change)

    def check(self, keys: list[str]) -> bool:
        """Whether every key of `keys` is set (without waiting)."""
        return self._update(lambda data: all(k in data for k in keys))

    def wait(self, keys: list[str], timeout: timedelta | None = None) -> None:
        """Wait until every key of `keys` is set; DistStoreError after `timeout` (default:
        the store's)."""
        self._wait_for("wait", list(keys), timeout)

    def delete_key(self, key: str) -> bool:
        """Remove `key`; whether it was there."""
        return self._update(lambda data: data.pop(key, None) is not None)

    def num_keys(self) -> int:
        return self._update(len)

    def list_keys(self) -> list[str]:
        return self._update(list)

    def has_extended_api(self) -> bool:
        return True

    # queues: FIFO lists of values beside the keys (HashStore and PrefixStore over one)
    def queue_push(self, key: str, value) -> None:
        raise NotImplementedError(f"{type(self).__name__}: queue support is not implemented")

    def queue_pop(self, key: str, block: bool = True) -> bytes:
        raise NotImplementedError(f"{type(self).__name__}: queue support is not implemented")

    def queue_len(self, key: str) -> int:
        raise NotImplementedError(f"{type(self).__name__}: queue support is not implemented")


class HashStore(Store):
    """A store in this process's memory, shared by its threads; it also keeps queues."""

    def __init__(self):
        super().__init__()
        self._data: dict[str, bytes] = {}
        self._queues: dict[str, list[bytes]] = {}
        self._lock = threading.Lock()

    def _update(self, change):
        with self._lock:
            return change(self._data)

    def check(self, keys: list[str]) -> bool:
        with self._lock:
            return all(k in self._data or self._queues.get(k) for k in keys)

    def queue_push(self, key: str, value) -> None:
        value = _as_bytes("HashStore.queue_push", value)
        with self._lock:
            self._queues.setdefault(key, []).append(value)

    def queue_len(self, key: str) -> int:
        with self._lock:
            return len(self._queues.get(key, ()))

    def queue_pop(self, key: str, block: bool = True) -> bytes:
        """The oldest value of queue `key`; waits for one (up to the timeout) if `block`."""
        limit = _seconds(self._timeout)
        deadline = time.monotonic() + limit
        while True:
            with self._lock:
                if self._queues.get(key):
                    return self._queues[key].pop(0)
            if not block:
                raise QueueEmptyError(f"HashStore.queue_pop: queue {key!r} is empty")
            if time.monotonic() >= deadline:
                raise DistStoreError(f"HashStore.queue_pop: timed out after {limit:g} s waiting "
                                     f"for a value in queue {key!r}")
            self._sleep()


class FileStore(Store):
    """A store in the file `file_name`, shared by the processes of one machine that open it.

    The file is a log of (key, value) records, appended under an exclusive `flock`, that each
    process replays from where it last read. As in torch, opening counts the process in (a
    "refcount/" key, also counted by `num_keys`), and with `world_size` given, the store that
    lets go when `world_size` of them have removes the file."""

    _DELETED = 0xFFFFFFFF        # a value length that marks a deletion
    _REFCOUNT, _CLEANUP = "refcount/", "cleanup/"

    def __init__(self, file_name: str | os.PathLike, world_size: int = -1):
        super().__init__()
        self.path, self.world_size = os.fspath(file_name), world_size
        self._data: dict[str, bytes] = {}
        self._offset = 0
        self._closed = False
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._update(lambda data: self._count(data, self._REFCOUNT))

    def _count(self, data: dict, key: str) -> int:
        data[key] = str(int(data.get(key, b"0")) + 1).encode()
        return int(data[key])

    def _update(self, change):
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self._replay()
            before = dict(self._data)
            result = change(self._data)
            self._write_changes(before)
            return result
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _replay(self) -> None:
        """Apply the records other processes appended since this one last read."""
        size = os.fstat(self._fd).st_size
        if size <= self._offset:
            return
        raw = os.pread(self._fd, size - self._offset, self._offset)
        pos = 0
        while pos < len(raw):
            (klen,) = struct.unpack_from("<I", raw, pos)
            key = raw[pos + 4:pos + 4 + klen].decode()
            pos += 4 + klen
            (vlen,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            if vlen == self._DELETED:
                self._data.pop(key, None)
            else:
                self._data[key] = raw[pos:pos + vlen]
                pos += vlen
        self._offset = size

    def _write_changes(self, before: dict) -> None:
        records = []
        for key in before.keys() - self._data.keys():
            records.append(self._record(key, None))
        for key, value in self._data.items():
            if before.get(key) != value:
                records.append(self._record(key, value))
        if records:
            blob = b"".join(records)
            os.pwrite(self._fd, blob, self._offset)
            self._offset += len(blob)

    def _record(self, key: str, value: bytes | None) -> bytes:
        k = key.encode()
        if value is None:
            return struct.pack("<I", len(k)) + k + struct.pack("<I", self._DELETED)
        return struct.pack("<I", len(k)) + k + struct.pack("<I", len(value)) + value

    def delete_key(self, key: str) -> bool:
        """Remove `key`. Returns True, whether or not it was there, as torch's FileStore does."""
        super().delete_key(key)
        return True

    def list_keys(self) -> list[str]:
        return [k for k in super().list_keys() if k not in (self._REFCOUNT, self._CLEANUP)]

    def has_extended_api(self) -> bool:
        return False

    def __del__(self):
        if getattr(self, "_fd", None) is None or self._closed:
            return
        self._closed = True
        try:
            done = self._update(lambda data: self._count(data, self._CLEANUP))
            if self.world_size >= 0 and done >= self.world_size:
                os.unlink(self.path)
        except Exception:       # a destructor must not raise (at exit, os may be gone)
            pass
        finally:
            os.close(self._fd)

    def __repr__(self) -> str:
        return f"FileStore({self.path!r}, world_size={self.world_size})"


class PrefixStore(Store):
    """`store` seen through a key prefix: key k is `prefix/k` in the underlying store, so
    several users of one store cannot collide. `num_keys` counts the whole underlying store,
    as in torch."""

    def __init__(self, prefix: str, store: Store):
        if not isinstance(store, Store):
            raise TypeError(f"PrefixStore: store must be a kiln.distributed Store, got "
                            f"{type(store).__name__}")
        super().__init__(store.timeout)
        self.prefix, self.underlying_store = prefix, store

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}"

    @property
    def timeout(self) -> timedelta:
        return self.underlying_store.timeout

    def set_timeout(self, timeout: timedelta) -> None:
        self.underlying_store.set_timeout(timeout)

    def set(self, key, value):
        self.underlying_store.set(self._key(key), value)

    def get(self, key):
        return self.underlying_store.get(self._key(key))

    def multi_get(self, keys):
        return self.underlying_store.multi_get([self._key(k) for k in keys])

    def multi_set(self, keys, values):
        self.underlying_store.multi_set([self._key(k) for k in keys], values)

    def add(self, key, amount):
        return self.underlying_store.add(self._key(key), amount)

    def append(self, key, value):
        self.underlying_store.append(self._key(key), value)

    def compare_set(self, key, expected_value, desired_value):
        return self.underlying_store.compare_set(self._key(key), expected_value, desired_value)

    def check(self, keys):
        return self.underlying_store.check([self._key(k) for k in keys])

    def wait(self, keys, timeout=None):
        self.underlying_store.wait([self._key(k) for k in keys], timeout)

    def delete_key(self, key):
        return self.underlying_store.delete_key(self._key(key))

    def num_keys(self):
        return self.underlying_store.num_keys()

    def list_keys(self):
        mark = self.prefix + "/"
        return [k[len(mark):] for k in self.underlying_store.list_keys() if k.startswith(mark)]

    def has_extended_api(self):
        return self.underlying_store.has_extended_api()

    def queue_push(self, key, value):
        self.underlying_store.queue_push(self._key(key), value)

    def queue_pop(self, key, block=True):
        return self.underlying_store.queue_pop(self._key(key), block)

    def queue_len(self, key):
        return self.underlying_store.queue_len(self._key(key))


class TCPStore(Store):
    """torch's network store. kiln has no network transport of its own (ranks talk through
    MPI), so this only says what to use instead."""

    def __init__(self, host_name: str = "", port: int = 0, world_size: int | None = None,
                 is_master: bool = False, timeout: timedelta = _STORE_TIMEOUT, *args, **kwargs):
        raise NotImplementedError(
            f"TCPStore({host_name!r}, {port}): kiln has no network transport of its own, so it "
            "has no TCPStore. Processes of one machine can share a "
            "kiln.distributed.FileStore(path); ranks started by kiln's launcher (python -m "
            "kiln.distributed.run, mpiexec or kiln.multiprocessing.spawn) need no store: call "
            "init_process_group() and MPI does the rendezvous")
