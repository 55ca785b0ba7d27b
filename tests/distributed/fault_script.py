"""A tiny job for the launcher and fault tests: `fault_script.py MODE [args]`.

ok: all-reduce each rank's number and print the sum; raise / exit / kill: rank 1 raises, calls
sys.exit(4), or is killed by SIGKILL before the all-reduce the other rank waits in; orphan:
rank 1 writes its pid to the file named by the next argument, SIGKILLs the launcher's watcher
process above it and sleeps (it must not outlive the watcher)."""

import os
import signal
import sys
import time

import kiln
import kiln.distributed as dist

mode = sys.argv[1]

def env() -> str:
    return " ".join(str(os.environ.get(k)) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                     "MASTER_ADDR"))


before = env()          # torchrun sets these before the script starts; kiln's launcher too
dist.init_process_group()
rank = dist.get_rank()
print(f"rank {rank} env before init {before} after {env()} args {sys.argv[2:]}", flush=True)
if rank == 1:
    if mode == "raise":
        raise ValueError("rank one is broken")
    if mode == "exit":
        sys.exit(4)
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "orphan":
        with open(sys.argv[2], "w") as f:
            f.write(str(os.getpid()))
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(60)
t = kiln.tensor([float(rank + 1)])
dist.all_reduce(t)
print(f"rank {rank} sum {t.item():.0f}", flush=True)
dist.destroy_process_group()
