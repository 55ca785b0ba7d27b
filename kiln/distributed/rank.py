"""What each rank runs under `kiln.distributed.run`: torchrun's environment variables set from
MPI's, then the user's script as `__main__`. An exception or a non-zero exit on one rank aborts
every rank (otherwise the others would wait for it in their next collective forever).

On Linux the script runs in a child process and this one watches it, as torchrun's agent watches
its workers: a script killed by a signal (SIGKILL, a segfault) cannot say so itself, so the
watcher writes `rank N failed: killed by signal 9 (SIGKILL)` for the launcher before mpiexec
tears the job down. mpiexec's own report cannot be trusted for that: once it kills the other
ranks it may name one of them. The child dies with its watcher (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys
import traceback

# (rank, world size, local rank, local world size) as MPICH's Hydra and Open MPI name them
_SOURCES = (("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
            ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
             "OMPI_COMM_WORLD_LOCAL_SIZE"))


def set_environment() -> int:
    """Set RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE from the MPI launcher's variables."""
    env = os.environ
    for names in _SOURCES:
        if names[0] in env:
            rank, size = env[names[0]], env.get(names[1], "1")
            env["RANK"], env["WORLD_SIZE"] = rank, size
            env["LOCAL_RANK"] = env.get(names[2], rank)
            env["LOCAL_WORLD_SIZE"] = env.get(names[3], size)
            return int(rank)
    env.setdefault("RANK", "0")
    env.setdefault("WORLD_SIZE", "1")
    env.setdefault("LOCAL_RANK", "0")
    env.setdefault("LOCAL_WORLD_SIZE", "1")
    return int(env["RANK"])


def _run_dir() -> str | None:
    run_dir = os.environ.get("KILN_DISTRIBUTED_RUN_DIR")
    return run_dir if run_dir and os.path.isdir(run_dir) else None


def _report(rank: int, message: str) -> None:
    sys.stderr.write(f"kiln.distributed.run: rank {rank} failed: {message}; aborting the "
                     "other ranks\n")
    sys.stderr.flush()
    run_dir = _run_dir()
    if run_dir:     # mpiexec may drop the line above as it tears the job down: the launcher
        with open(os.path.join(run_dir, f"failed.{rank}"), "w") as f:     # reads this
            f.write(message)


def _abort(rank: int, message: str) -> None:
    _report(rank, message)
    try:
        from mpi4py import MPI
        MPI.COMM_WORLD.Abort(1)
    except ImportError:
        pass
    os._exit(1)


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent (the watcher) dies."""
    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:          # the watcher died before prctl took effect
        os._exit(1)


def wait_passing_signals(child: int) -> tuple[int | None, bool]:
    """Wait for process `child`, passing on to it the signals that stop a job (mpiexec
    forwards Ctrl-C as SIGINT; SIGTERM, SIGHUP). Returns (its wait status, or None when it
    was not ours to wait for; whether such a signal came)."""
    stopped = []

    def forward(signum, frame):
        stopped.append(signum)
        os.kill(child, signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    while True:
        try:
            return os.waitpid(child, 0)[1], bool(stopped)
        except ChildProcessError:
            return None, bool(stopped)
        except InterruptedError:
            continue


def _watch(rank: int, child: int) -> int:
    """Wait for the script's process; report a death it could not report itself. A signal
    that stops the job is passed on to the script and is not its failure."""
    status, stopped = wait_passing_signals(child)
    if status is None:
        return 1
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        if not stopped:         # not a signal the job was sent: the script died of it
            _report(rank, f"killed by signal {signum} ({signal.Signals(signum).name})")
        return 128 + signum
    code = os.WEXITSTATUS(status)
    run_dir = _run_dir()
    if code and not stopped and not (run_dir and os.path.exists(
            os.path.join(run_dir, f"failed.{rank}"))):
        _report(rank, f"exit status {code}")        # os._exit(n): the script said nothing
    return code


def main() -> None:
    rank = set_environment()
    run_dir = _run_dir()
    if run_dir:     # lets the launcher name a rank that dies (mpiexec reports this pid)
        with open(os.path.join(run_dir, str(os.getpid())), "w") as f:
            f.write(str(rank))
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m kiln.distributed.rank [-m] script [args...]")
    as_module = sys.argv[1] == "-m"
    target = sys.argv[2] if as_module else sys.argv[1]
    sys.argv = sys.argv[(2 if as_module else 1):]
    if os.environ.get("KILN_APPEND_LOCAL_RANK") == "1":    # kiln.distributed.launch's ranks
        sys.argv.append(f"--local-rank={os.environ['LOCAL_RANK']}")
    if sys.platform.startswith("linux"):    # elsewhere the script runs in this process
        sys.stdout.flush()
        sys.stderr.flush()
        parent, child = os.getpid(), os.fork()
        if child:
            os._exit(_watch(rank, child))
        _die_with_parent(parent)
    try:
        if as_module:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
            runpy.run_path(target, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            _abort(rank, f"exit status {exc.code}")
        raise
    except BaseException:
        traceback.print_exc()
        _abort(rank, f"{sys.exc_info()[0].__name__}: {sys.exc_info()[1]}")


if __name__ == "__main__":
    main()
