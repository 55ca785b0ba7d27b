"""`spawn`: start N processes running fn(i, *args) and fail loudly if any of them fails
(torch.multiprocessing.spawn / start_processes).

With start_method="spawn" (the default) the processes are started as one MPI job whenever
mpi4py and mpiexec are available and the arguments hold no kiln Tensor and no multiprocessing
object (queue, lock, pipe, shared value): `mpiexec -n nprocs` runs
`kiln.multiprocessing._mpi_worker`, which prepares each process as Python's spawn start method
does (the parent's sys.path, working directory and `__main__` re-imported as `__mp_main__`),
then calls fn(MPI rank, *args). `init_process_group(rank=i, world_size=nprocs)` inside fn then
finds the other processes, the way PyTorch's tutorials start DDP. Otherwise the processes are
Python multiprocessing processes: tensors passed to them travel through shared memory
(`kiln.multiprocessing.reductions`), and queues and locks through inherited file descriptors,
which mpiexec cannot do.
"""

from __future__ import annotations

import ctypes
import importlib.util
import io
import multiprocessing
import multiprocessing.connection
import multiprocessing.spawn
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback


class ProcessException(Exception):
    """A spawned process failed; `error_index` is its index, `error_pid` its pid."""

    def __init__(self, msg: str, error_index: int, error_pid: int):
        super().__init__(msg)
        self.msg, self.error_index, self.error_pid = msg, error_index, error_pid
        self.pid = error_pid

    def __reduce__(self):
        return type(self), (self.msg, self.error_index, self.error_pid)


class ProcessRaisedException(ProcessException):
    """A spawned process raised; the message holds its traceback."""


class ProcessExitedException(ProcessException):
    """A spawned process exited with a non-zero status (or was killed by a signal: then
    `exit_code` is minus the signal number and `signal_name` its name, as in PyTorch)."""

    def __init__(self, msg: str, error_index: int, error_pid: int, exit_code: int,
                 signal_name: str | None = None):
        super().__init__(msg, error_index, error_pid)
        self.exit_code, self.signal_name = exit_code, signal_name

    def __reduce__(self):
        return type(self), (self.msg, self.error_index, self.error_pid, self.exit_code,
                            self.signal_name)


def _raised(index: int, pid: int, trace: str) -> ProcessRaisedException:
    return ProcessRaisedException(f"\n\n-- Process {index} terminated with the following "
                                  f"error:\n{trace}", index, pid)


def _exited(index: int, pid: int, exit_code: int) -> ProcessExitedException:
    """torch's exception for a process that exited with `exit_code` (negative: a signal)."""
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"<Unknown signal {-exit_code}>"
        return ProcessExitedException(f"process {index} terminated with signal {name}", index,
                                      pid, exit_code, name)
    return ProcessExitedException(f"process {index} terminated with exit code {exit_code}",
                                  index, pid, exit_code)


# -- processes started by multiprocessing (fork, forkserver, or tensors among the arguments)

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

    def join(self, timeout: float | None = None, grace_period: float | None = None) -> bool:
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
            raise _raised(i, self.processes[i].pid, tb)
        raise _exited(index, proc.pid, proc.exitcode)


# -- processes started as one MPI job

class MPIProcessContext(ProcessContext):
    """The processes of one `mpiexec -n nprocs` job started by `spawn`.

    Each process writes its pid to `job_dir/pid<i>` as it starts and leaves its outcome in
    `job_dir/rank<i>` (a pickled dict: "ok", "raised" with the traceback, or "exited" with the
    exit code, negative for a signal); a process that fails makes the MPI job stop the others,
    so `join()` raises for the earliest failure.
    """

    def __init__(self, popen: subprocess.Popen, job_dir: str, nprocs: int):
        self.popen, self.job_dir, self.nprocs = popen, job_dir, nprocs
        self.processes = []     # no multiprocessing.Process objects: mpiexec started them
        self._failure: ProcessException | None = None
        self._done = False
        self._pids: dict[int, int] = {}

    def pids(self) -> list[int]:
        """The pids of the processes running fn, by index, of those started so far."""
        return [pid for _, pid in sorted(self._pid_by_index().items())]

    def _pid_by_index(self) -> dict[int, int]:
        if self._done:
            return self._pids
        for i in range(self.nprocs):
            if i not in self._pids:
                try:
                    with open(os.path.join(self.job_dir, f"pid{i}")) as f:
                        self._pids[i] = int(f.read())
                except (OSError, ValueError):
                    pass
        return self._pids

    def join(self, timeout: float | None = None, grace_period: float | None = None) -> bool:
        """Wait (up to `timeout` seconds) for the job: True when every process succeeded,
        False while it is still running; raises ProcessRaisedException/ProcessExitedException
        for the process that failed first (mpiexec has stopped the others by then)."""
        if self._failure is not None:
            raise self._failure
        if self._done:
            return True
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        outcomes = self._outcomes()
        pids = self._pid_by_index()
        shutil.rmtree(self.job_dir, ignore_errors=True)
        self._done = True
        failures = sorted((o["time"], i) for i, o in outcomes.items() if o["status"] != "ok")
        if failures:
            index = failures[0][1]
            first = outcomes[index]
            if first["status"] == "raised":
                self._failure = _raised(index, first["pid"], first["traceback"])
            else:
                self._failure = _exited(index, first["pid"], first["exit_code"])
        elif code != 0:
            # no process said why (mpiexec itself failed, or a process was killed before its
            # watcher could write): name the first one without an outcome
            silent = [i for i in range(self.nprocs) if i not in outcomes]
            index = silent[0] if silent else 0
            pid = pids.get(index, -1)
            self._failure = ProcessExitedException(
                f"process {index} terminated: mpiexec exited with status {code} and processes "
                f"{silent} left no outcome (mpiexec's own report, if any, is above)",
                index, pid, code)
        if self._failure is not None:
            raise self._failure
        return True

    def _outcomes(self) -> dict[int, dict]:
        found = {}
        for i in range(self.nprocs):
            try:
                with open(os.path.join(self.job_dir, f"rank{i}"), "rb") as f:
                    found[i] = pickle.load(f)
            except (OSError, EOFError, pickle.UnpicklingError):
                pass
        return found


class _FindShared(pickle.Pickler):
    """Pickles (fn, args) and notes whether they hold something multiprocessing shares between
    its processes and mpiexec's could not: a kiln Tensor (sent as shared memory), a pipe's
    Connection (a file descriptor) or a sharedctypes object. Each is replaced by a placeholder
    (a tensor's bytes are never copied): such a call goes through multiprocessing."""

    def __init__(self, file):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        from kiln import Tensor
        self.shared_types = (Tensor, multiprocessing.connection.Connection,
                             ctypes._SimpleCData, ctypes.Array, ctypes.Structure)
        self.found_shared = False

    def persistent_id(self, obj):
        if isinstance(obj, self.shared_types):
            self.found_shared = True
            return "shared"
        return None


def _pickle_job(fn, args: tuple) -> bytes | None:
    """(fn, args) pickled for the MPI workers, or None when only multiprocessing can send them
    (a kiln Tensor, a queue, lock, pipe or shared value among args)."""
    buf = io.BytesIO()
    pickler = _FindShared(buf)
    try:
        pickler.dump((fn, args))
    except RuntimeError as exc:
        if "through inheritance" in str(exc):     # a queue, lock, Value...: multiprocessing's
            return None
        raise
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        try:
            pickle.dumps(fn)
            what, obj = "args", args
        except Exception:
            what, obj = "fn", fn
        raise TypeError(
            f"spawn: cannot send {what}={obj!r} to the new processes ({type(exc).__name__}: "
            f"{exc}). Each new process re-imports your script and finds fn by its name, so fn "
            "must be a function defined at the top level of a module (not a lambda or a "
            "function defined inside another one), and args must be picklable") from exc
    return None if pickler.found_shared else buf.getvalue()


def _mpi_available() -> str | None:
    """The mpiexec to start an MPI job with, or None when mpi4py or mpiexec is missing."""
    if importlib.util.find_spec("mpi4py") is None:
        return None
    from kiln.distributed.run import find_mpiexec
    return find_mpiexec()


def _interrupt_when_parent_dies() -> None:
    """In mpiexec's process before exec: a parent that dies (killed, Ctrl-C) takes the MPI job
    down with it, as torch's spawned processes get SIGINT when their parent dies."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0)


def _start_mpi_job(mpiexec: str, job: bytes, nprocs: int) -> MPIProcessContext:
    job_dir = tempfile.mkdtemp(prefix="kiln-spawn-")
    try:
        preparation = multiprocessing.spawn.get_preparation_data("SpawnProcess")
        preparation["authkey"] = bytes(preparation["authkey"])     # refuses pickle as it is
        # under `kiln run` the script's `import torch` means kiln: so it must in the workers
        preparation["kiln_as_torch"] = any(type(finder).__module__ == "kiln.as_torch"
                                           for finder in sys.meta_path)
        with open(os.path.join(job_dir, "preparation.pkl"), "wb") as f:
            pickle.dump(preparation, f)
        with open(os.path.join(job_dir, "job.pkl"), "wb") as f:
            f.write(job)
        env = dict(os.environ)
        # the workers import kiln from where this kiln is, before they take the parent's path
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                    else "")
        cmd = [mpiexec, "-n", str(nprocs), sys.executable, "-m",
               "kiln.multiprocessing._mpi_worker", job_dir]
        # stdout and stderr are the parent's (mpiexec forwards the workers'), after what the
        # parent printed so far; stdin is not passed on, as multiprocessing gives none
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        popen = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                 preexec_fn=(_interrupt_when_parent_dies
                                             if sys.platform.startswith("linux") else None))
    except BaseException:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise
    return MPIProcessContext(popen, job_dir, nprocs)


def start_processes(fn, args: tuple = (), nprocs: int = 1, join: bool = True,
                    daemon: bool = False, start_method: str = "spawn"):
    """Run fn(i, *args) for i in range(nprocs), each in a new process; see `spawn`."""
    if start_method == "spawn" and nprocs >= 1:
        mpiexec = _mpi_available()
        job = _pickle_job(fn, args) if mpiexec is not None else None
        if job is not None:
            context = _start_mpi_job(mpiexec, job, nprocs)
            if not join:
                return context
            while not context.join():
                pass
            return None
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
    """Run fn(i, *args) for i in range(nprocs), each in a new process (torch's mp.spawn).

    join=True waits for all of them and raises ProcessRaisedException (with the failing
    process's traceback) or ProcessExitedException (its exit code, or the signal that killed
    it) for the first one that fails; join=False returns a ProcessContext whose `join()` does
    the waiting.

    How the processes start: with start_method="spawn" (the default), when mpi4py and
    mpiexec are available and args hold no kiln Tensor and no multiprocessing queue, lock,
    pipe or shared value, as ONE MPI job, so
    `kiln.distributed.init_process_group(rank=i, world_size=nprocs)` in fn forms a process
    group of them (or of the first world_size of them). fn and args are pickled, and each
    process re-imports your script as `__mp_main__` (guard the script's own work with
    `if __name__ == "__main__":`). As in PyTorch, no RANK/WORLD_SIZE is set in the processes'
    environment: pass them to fn. Otherwise (start_method "fork" or "forkserver", MPI
    missing, or a Tensor among args, which is then shared with the processes through shared
    memory as PyTorch does, or a queue, lock, pipe or shared value) they are plain
    multiprocessing processes, which cannot form a process group with each other.
    """
    return start_processes(fn, args, nprocs, join, daemon, start_method)
