"""Shared helpers for the benchmarks: run a command and measure its wall time and memory.

    python bench/common.py -- sleep 1        # measure any command, print the JSON

``measure(cmd)`` starts a small stdlib-only wrapper process (this file run as a script), which
starts ``cmd``, times it (``time.perf_counter`` around start .. exit, in seconds), and while it
runs samples every ~50 ms the resident memory of the whole process tree under it: ``VmRSS``
from ``/proc/<pid>/status`` of the command's process and all its descendants (worker pools,
DataLoader workers), summed; the peak of that sum is ``peak_tree_rss_mb``. Because sampling
is periodic, a short spike between two samples can be missed; the sum over processes counts
shared pages (e.g. the torch library mapped by forked workers) once per process, as ``ps``
does. After the command exits the wrapper reads ``resource.getrusage(RUSAGE_CHILDREN)
.ru_maxrss``: the largest peak RSS of any single process of the tree (exact, kernel-tracked,
for every descendant that was waited for) as ``max_single_rss_mb``; it has a floor of about
15 MB, the wrapper's own size, which a forked child inherits before it execs the command. Running the wrapper as
its own process keeps that number per command, not the maximum over every command this
benchmark started. MB here means 2**20 bytes.

Stdlib only: importable from both /work/venv and /work/nnunet_venv.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

SAMPLE_INTERVAL_S = 0.05
KB_PER_MB = 1024.0


@dataclass(frozen=True)
class Measurement:
    """One measured run. Times in seconds, memory in MB (2**20 bytes)."""

    command: tuple[str, ...]
    returncode: int
    wall_s: float
    peak_tree_rss_mb: float
    max_single_rss_mb: float
    samples: int
    log: str  # file holding the command's stdout and stderr


class CommandFailed(RuntimeError):
    pass


def _parent_map() -> dict[int, int]:
    """pid -> parent pid for every process visible in /proc."""
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # exited meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces or parentheses, so split after the last ')'
        fields = stat[stat.rfind(b")") + 2:].split()
        parents[int(entry.name)] = int(fields[1])
    return parents


def descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parent_map().items():
        children.setdefault(ppid, []).append(pid)
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def rss_kb(pid: int) -> int:
    """Current resident set size of ``pid`` in kB (0 if it has exited or is a zombie)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kb(root: int) -> int:
    """Summed VmRSS (kB) of ``root`` and all its descendants right now."""
    return sum(rss_kb(p) for p in descendants(root))


class TreeSampler(threading.Thread):
    """Samples ``tree_rss_kb(root)`` every ``interval_s`` until ``stop()``; keeps the maximum."""

    def __init__(self, root: int, interval_s: float = SAMPLE_INTERVAL_S):
        super().__init__(daemon=True)
        self.root, self.interval_s = root, interval_s
        self.peak_kb, self.samples = 0, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak_kb = max(self.peak_kb, tree_rss_kb(self.root))
            self.samples += 1
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _measure_here(cmd: Sequence[str], log_path: str, interval_s: float) -> dict:
    """Run ``cmd`` as a child of this process and measure it (the wrapper's job)."""
    with open(log_path, "ab") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid, interval_s)
        sampler.start()
        returncode = proc.wait()
        wall = time.perf_counter() - started
        sampler.stop()
    single_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # kB on Linux
    return {"returncode": returncode, "wall_s": wall, "peak_tree_rss_mb": sampler.peak_kb / KB_PER_MB,
            "max_single_rss_mb": single_kb / KB_PER_MB, "samples": sampler.samples}


def measure(cmd: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
            log_path: str | Path | None = None, interval_s: float = SAMPLE_INTERVAL_S,
            check: bool = True) -> Measurement:
    """Run ``cmd`` (argv list) and return its wall time and memory (see the module docstring).

    ``env`` replaces the environment when given; stdout and stderr go to ``log_path`` (a temp
    file by default). With ``check`` a non-zero exit raises ``CommandFailed`` with the log tail.
    """
    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix="bench_", suffix=".log")
        os.close(fd)
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    fd, result_path = tempfile.mkstemp(prefix="bench_", suffix=".json")
    os.close(fd)
    try:
        wrapper = [sys.executable, str(Path(__file__).resolve()), "--result", result_path, "--log", str(log_path),
                   "--interval", str(interval_s), "--"] + [str(c) for c in cmd]
        done = subprocess.run(wrapper, env=dict(env) if env is not None else None, cwd=cwd)
        if done.returncode != 0 and Path(result_path).stat().st_size == 0:
            raise CommandFailed(f"measurement wrapper failed (exit {done.returncode}) for {' '.join(map(str, cmd))}")
        result = json.loads(Path(result_path).read_text())
    finally:
        os.unlink(result_path)
    m = Measurement(command=tuple(str(c) for c in cmd), log=str(log_path), **result)
    if check and m.returncode != 0:
        raise CommandFailed(f"exit {m.returncode}: {' '.join(m.command)}\n--- last lines of {log_path} ---\n"
                            f"{log_tail(log_path)}")
    return m


def run_untimed(cmd: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
                log_path: str | Path | None = None) -> None:
    """Run a set-up step; raise ``CommandFailed`` with the output tail if it fails."""
    done = subprocess.run([str(c) for c in cmd], env=dict(env) if env is not None else None, cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as f:
            f.write(done.stdout)
    if done.returncode != 0:
        tail = done.stdout.decode(errors="replace")[-3000:]
        raise CommandFailed(f"exit {done.returncode}: {' '.join(map(str, cmd))}\n{tail}")


def log_tail(path: str | Path, chars: int = 3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub markdown table; floats with two decimals, None as n/a."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(obj, path: str | Path) -> None:
    """Write ``obj`` as indented JSON atomically (temp name + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(obj):
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def machine_info() -> dict:
    """CPU model, core count and load average: context for every benchmark result."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "loadavg_1_5_15": list(os.getloadavg()),
            "python": sys.version.split()[0]}


def _wrapper_main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(description="measure one command (used by measure(); also handy alone)")
    p.add_argument("--result", default=None, help="write the JSON here (default: print it)")
    p.add_argument("--log", default=os.devnull, help="file for the command's stdout and stderr")
    p.add_argument("--interval", type=float, default=SAMPLE_INTERVAL_S, help="sampling period in seconds")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        p.error("give a command after --")
    result = _measure_here(cmd, args.log, args.interval)
    text = json.dumps(result)
    if args.result:
        tmp = args.result + ".tmp"
        Path(tmp).write_text(text)
        os.replace(tmp, args.result)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(_wrapper_main(sys.argv[1:]))
