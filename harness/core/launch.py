"""How a case process starts and ends (M1): a fork of a preloaded server, a fresh interpreter, or torchrun.

A case is measured in several short processes (docs/measurement.md, "Processes and rounds"). A fresh Python
interpreter spends ~2 s importing torch and harness before it does any work, more than a short process measures,
so by default a case process is forked from a server that imported them once (the standard library's
`multiprocessing` forkserver: `set_forkserver_preload`), and a case of several ranks gets one forked child per
rank with the variables torchrun's standalone mode sets (RANK, WORLD_SIZE, MASTER_ADDR, ...). The server never
runs a torch op, creates a thread pool or initialises CUDA, so each child starts its own OpenMP pool, allocator,
heap pages and CUDA context, as a fresh process does; docs/measurement.md gives the between-process spread
measured both ways. `fresh=True` (`harness run --fresh-processes`), or a platform without fork, starts every
process as a new interpreter, under torchrun for several ranks (multi-node cases always use torchrun).

Every process gets its own session (process group), so a timeout or Ctrl-C kills it with all it started.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

EXIT_GRACE_S = 30.0  # seconds a worker may take to exit after writing its result
RANKS_EXIT_GRACE_S = 5.0  # the same for forked ranks: 1 in ~5 hung in gloo's shutdown on a 2-core CPU
# imported once by the server: torch, the modules torch imports lazily at a run's first optimizer or compile
# (torch._dynamo alone was 1.2-1.9 s of every case process), harness and the built-in plugins
PRELOAD = ("torch", "torch._dynamo", "torch._inductor.compile_fx", "harness.core.worker", "harness.core.energy",
           "harness.core.load", "harness.core.plugins")


def worker_command(processes: int, job_path: Path, result_path: Path) -> list[str]:
    """`python -m harness.core.worker`, under torchrun when the case needs several processes."""
    if processes > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                "-m", "harness.core.worker", str(job_path), str(result_path)]
    return [sys.executable, "-m", "harness.core.worker", str(job_path), str(result_path)]


def launch(processes: int, job_path: Path, result_path: Path, log_path: Path, timeout: float,
           fresh: bool = False) -> str:
    """Run the worker on a job and wait for it: forked from the preloaded server (its ranks too, as torchrun
    would start them on one node), or with `fresh` (or without fork) a new interpreter, under torchrun for
    several ranks. Kill its process groups on timeout or Ctrl-C, or when it has not exited EXIT_GRACE_S after
    writing its result (a gloo process group that hangs in shutdown). Returns "exit N", "signal NAME",
    "timeout" or "hung at exit"."""
    if not fresh and can_fork():
        process = Ranks([forked(job_path, result_path, log_path, env) for env in rank_environments(processes)])
    else:
        with open(log_path, "w") as log:
            process = Subprocess(subprocess.Popen(worker_command(processes, job_path, result_path), stdout=log,
                                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                  start_new_session=True))
    return supervise(process, result_path, timeout, RANKS_EXIT_GRACE_S if processes > 1 and not fresh else EXIT_GRACE_S)


def can_fork() -> bool:
    return "forkserver" in multiprocessing.get_all_start_methods()


def rank_environments(processes: int) -> list[dict[str, str]]:
    """The variables torchrun --standalone gives each of `processes` ranks on this machine (none for one)."""
    if processes == 1:
        return [{}]
    with socket.socket() as probe:  # a free port for the rendezvous, as torchrun's standalone mode picks one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [{"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(processes), "LOCAL_WORLD_SIZE": str(processes),
             "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)} for r in range(processes)]


class Subprocess:
    """A Popen seen through the calls `supervise` makes."""

    def __init__(self, popen: subprocess.Popen):
        self.popen = popen

    def join(self, timeout: float) -> None:
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()

    def kill(self) -> None:
        _killpg(self.popen.pid)
        self.join(5.0)


class Ranks:
    """Forked ranks of one case, supervised as torchrun's agent does: done when all have exited, failed (and the
    others killed) as soon as one fails."""

    def __init__(self, ranks: list):
        self.ranks = ranks

    def join(self, timeout: float) -> None:
        multiprocessing.connection.wait([r.sentinel for r in self.ranks if r.exitcode is None], timeout)

    @property
    def exitcode(self) -> int | None:
        codes = [r.exitcode for r in self.ranks]
        failed = next((c for c in codes if c not in (None, 0)), None)
        if failed is not None:
            if None in codes:
                self.kill()
            return failed
        return None if None in codes else 0

    def kill(self) -> None:
        for rank in self.ranks:
            _killpg(rank.pid)
        for rank in self.ranks:
            rank.join(5.0)


def forked(job_path: Path, result_path: Path, log_path: Path, extra_env: dict[str, str]):
    """Start the worker as a child of the forkserver (started on first use with PRELOAD imported)."""
    from harness.core.plugins import builtin_modules

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([*PRELOAD, *builtin_modules()])
    process = context.Process(target=forked_worker, args=(str(job_path), str(result_path), str(log_path),
                                                         {**os.environ, **extra_env}), daemon=False)
    process.start()
    return process


def forked_worker(job_path: str, result_path: str, log_path: str, environ: dict[str, str]) -> None:
    """The forked child: its own session, the runner's environment as it is now (the server's is from when it
    started), output to the case's log, then `harness.core.worker.main`."""
    os.setsid()
    os.environ.clear()
    os.environ.update(environ)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    null = os.open(os.devnull, os.O_RDONLY)
    for fd, target in ((null, 0), (log, 1), (log, 2)):
        os.dup2(fd, target)
    from harness.core import worker

    code = worker.main([job_path, result_path])
    atexit._run_exitfuncs()  # what a fresh interpreter runs at exit (multiprocessing's child would skip them)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


def supervise(process, result_path: Path, timeout: float, grace: float = EXIT_GRACE_S) -> str:
    """Wait for `process` (Subprocess or Ranks), killing it on timeout, Ctrl-C or a hang at exit."""
    done, hung = threading.Event(), threading.Event()
    watcher = threading.Thread(target=_watch_exit, args=(process, result_path, done, hung, grace), daemon=True)
    watcher.start()
    deadline = time.monotonic() + timeout
    try:
        while process.exitcode is None:
            left = deadline - time.monotonic()
            if left <= 0:
                process.kill()
                return "timeout"
            process.join(min(left, 0.5))
    except KeyboardInterrupt:
        process.kill()
        raise
    finally:
        done.set()
    end_groups(process)
    if hung.is_set():
        return "hung at exit"
    code = process.exitcode
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit {code}"


def end_groups(process) -> None:
    """After the case's processes exited: SIGKILL what is left in their process groups (what they started and
    did not end, reparented when they exited). Safe against pid reuse: Linux does not give a new process a pid
    that is still some group's id, so a group that exists is the case's."""
    pids = [r.pid for r in process.ranks] if isinstance(process, Ranks) else [process.popen.pid]
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _watch_exit(process, result_path: Path, done: threading.Event, hung: threading.Event, grace: float) -> None:
    """Kill the worker if it is still running `grace` seconds after its result file appeared."""
    written = None
    while not done.wait(0.5):
        if written is None and result_path.exists():
            written = time.monotonic()
        if written is not None and time.monotonic() - written > grace:
            hung.set()
            process.kill()
            return


def _killpg(pid: int) -> None:
    """SIGKILL the process group `pid` leads and every descendant of `pid`, found before any is killed: torchrun
    starts each rank in a session of its own, which a kill of the agent's group alone would leave running."""
    try:
        tree = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        tree = []
    for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            target()
            break
        except (ProcessLookupError, PermissionError):
            continue
    for proc in tree:
        try:
            proc.kill()
        except psutil.Error:
            pass
