"""`spawn`: start N processes running fn(i, *args) and fail loudly if any of them fails."""

from __future__ import annotations

import multiprocessing
import traceback


class ProcessRaisedException(Exception):
    """A spawned process raised; the message holds its traceback."""

    def __init__(self, msg: str, error_index: int, error_pid: int):
        super().__init__(msg)
        self.error_index, self.pid = error_index, error_pid


class ProcessExitedException(Exception):
    """A spawned process exited with a non-zero status (or was killed by a signal)."""

    def __init__(self, msg: str, error_index: int, error_pid: int, exit_code: int):
        super().__init__(msg)
        self.error_index, self.pid, self.exit_code = error_index, error_pid, exit_code


def _wrap(fn, i: int, args: tuple, errors) -> None:
    try:
        fn(i, *args)
    except KeyboardInterrupt:
        pass
    except Exception:
        errors.put((i, traceback.format_exc()))
        raise SystemExit(1)


class ProcessContext:
    """The spawned processes; `join()` returns True once all have exited successfully."""

    def __init__(self, processes: list, errors):
        self.processes, self.errors = processes, errors

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the processes; on the first failure, stop the others and raise."""
        from multiprocessing.connection import wait
        alive = {p.sentinel: (i, p) for i, p in enumerate(self.processes) if p.is_alive()}
        while alive:
            ready = wait(list(alive), timeout=timeout)
            if not ready:
                return False
            for s in ready:
                i, p = alive.pop(s)
                p.join()
                if p.exitcode != 0:
                    self._fail(i, p)
        return True

    def _fail(self, index: int, proc) -> None:
        for p in self.processes:
            if p.is_alive():
                p.terminate()
        for p in self.processes:
            p.join()
        if not self.errors.empty():
            i, tb = self.errors.get()
            pid = self.processes[i].pid
            raise ProcessRaisedException(f"\n\n-- Process {i} terminated with the following "
                                         f"error:\n{tb}", i, pid)
        code = proc.exitcode
        why = f"signal {-code}" if code < 0 else f"exit code {code}"
        raise ProcessExitedException(f"process {index} terminated with {why}", index,
                                     proc.pid, code)


def start_processes(fn, args: tuple = (), nprocs: int = 1, join: bool = True,
                    daemon: bool = False, start_method: str = "spawn"):
    ctx = multiprocessing.get_context(start_method)
    errors = ctx.SimpleQueue()
    processes = []
    for i in range(nprocs):
        p = ctx.Process(target=_wrap, args=(fn, i, args, errors), daemon=daemon)
        p.start()
        processes.append(p)
    context = ProcessContext(processes, errors)
    if not join:
        return context
    while not context.join():
        pass
    return None


def spawn(fn, args: tuple = (), nprocs: int = 1, join: bool = True, daemon: bool = False,
          start_method: str = "spawn"):
    """Run fn(i, *args) for i in range(nprocs), each in a new process (torch's mp.spawn)."""
    return start_processes(fn, args, nprocs, join, daemon, start_method)
