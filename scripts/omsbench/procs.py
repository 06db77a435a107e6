"""Child processes of the benchmark, their CPU and memory, and waiting."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .config import CLK_TCK


def say(msg: str) -> None:
    print(f"\033[1;34m==>\033[0m {msg}", file=sys.stderr, flush=True)


def step(msg: str) -> None:
    print(f"\033[1;32m  ->\033[0m {msg}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and of its live descendants (each also counting
    its reaped children): a Postgres cluster, nginx and its worker."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu_seconds(p)
        todo.extend(parents.get(p, []))
    return total


def rss_peak_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def wait_until(what: str, probe, seconds: float, every: float = 0.1):
    deadline = time.monotonic() + seconds
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(every)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:
        return 0, ""


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Proc:
    """A child process the benchmark started; stopped by pid."""

    def __init__(self, name: str, argv: list[str], log: Path, cwd: Path | None = None, env=None):
        self.name = name
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.handle = open(log, "ab")
        self.p = subprocess.Popen(
            argv, cwd=cwd, stdout=self.handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, grace: float = 20.0) -> None:
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.handle.close()


STARTED: list[Proc] = []


def start(name: str, argv: list[str], log: Path, **kw) -> Proc:
    proc = Proc(name, argv, log, **kw)
    STARTED.append(proc)
    return proc


def stop(proc: Proc) -> None:
    proc.stop()
    if proc in STARTED:
        STARTED.remove(proc)


_CHILD_CPU = [0.0]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def reaped_children_cpu() -> float:
    """CPU of the children reaped since the last call or reset (here: k6)."""
    total = children_cpu()
    used, _CHILD_CPU[0] = total - _CHILD_CPU[0], total
    return used


def reset_child_cpu() -> None:
    _CHILD_CPU[0] = children_cpu()


