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

Timeouts: ``measure(cmd, timeout_s=T)`` and ``run_untimed(cmd, timeout_s=T)`` end a command that
runs past ``T`` seconds together with every process below it (``kill_tree``: SIGTERM, then SIGKILL
after ``KILL_GRACE_S``) and raise ``CommandFailed`` saying so (``measure(check=False)`` returns the
measurement with ``timed_out`` set instead).

Where things are (``hippocampus_task``, ``nnunet_bin``, ``autoseg_executable``): nothing outside
this repository has a built-in path. The Decathlon data comes from ``--data``/``--source`` or
``$AUTOSEG_BENCH_DATA`` (the folder holding ``Task04_Hippocampus``), nnU-Net v2 from
``$NNUNET_VENV`` (or ``--nnunet-venv``; ``bash bench/setup_nnunet.sh DIR`` makes one), autoseg
from the venv whose Python runs the script; a missing one stops the script with a message that
says what to set.

Stdlib only: importable from both autoseg's venv and nnU-Net's. The raw-dataset helpers
(``raw_cases``, ``building_folder``, the derived-dataset command line) are in ``raw_datasets.py``.
"""
from __future__ import annotations

import json
import os
import resource
import signal
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
KILL_GRACE_S = 15.0  # after SIGTERM, how long a timed-out command may take to exit before SIGKILL


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
    timed_out: bool = False  # ended by measure's timeout_s (returncode is then the signal's, negative)


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


def kill_tree(root: int, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM ``root`` and every process below it, then SIGKILL whatever is left after ``grace_s``.

    The tree is read before signalling, so workers that ``root`` started are ended too (the ones
    already re-parented elsewhere are not: they are no longer below it)."""
    pids = descendants(root)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids + [p for p in descendants(root) if p not in pids]:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] != b"Z"


def wait_or_kill(proc: subprocess.Popen, timeout_s: float | None) -> tuple[int, bool]:
    """Wait for ``proc``; past ``timeout_s`` seconds end its whole tree. Returns (returncode, timed_out)."""
    try:
        return proc.wait(timeout=timeout_s), False
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        return proc.wait(), True
    except KeyboardInterrupt:  # Ctrl-C or the caller giving up: do not leave the command running
        kill_tree(proc.pid, grace_s=0.1)
        raise


def _measure_here(cmd: Sequence[str], log_path: str, interval_s: float, timeout_s: float | None = None) -> dict:
    """Run ``cmd`` as a child of this process and measure it (the wrapper's job)."""
    with open(log_path, "ab") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid, interval_s)
        sampler.start()
        previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            returncode, timed_out = wait_or_kill(proc, timeout_s)
        finally:
            signal.signal(signal.SIGTERM, previous)
        wall = time.perf_counter() - started
        sampler.stop()
        if timed_out:
            log.write(f"\n[bench.common] timed out after {timeout_s:.0f} s; the command's processes were ended\n"
                      .encode())
    single_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # kB on Linux
    return {"returncode": returncode, "wall_s": wall, "peak_tree_rss_mb": sampler.peak_kb / KB_PER_MB,
            "max_single_rss_mb": single_kb / KB_PER_MB, "samples": sampler.samples, "timed_out": timed_out}


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def measure(cmd: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
            log_path: str | Path | None = None, interval_s: float = SAMPLE_INTERVAL_S,
            check: bool = True, timeout_s: float | None = None) -> Measurement:
    """Run ``cmd`` (argv list) and return its wall time and memory (see the module docstring).

    ``env`` replaces the environment when given; stdout and stderr go to ``log_path`` (a temp
    file by default). With ``check`` a non-zero exit raises ``CommandFailed`` with the log tail.
    ``timeout_s``: end the command (and its process tree) after that many seconds.
    """
    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix="bench_", suffix=".log")
        os.close(fd)
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    fd, result_path = tempfile.mkstemp(prefix="bench_", suffix=".json")
    os.close(fd)
    try:
        wrapper = [sys.executable, str(Path(__file__).resolve()), "--result", result_path, "--log", str(log_path),
                   "--interval", str(interval_s)]
        if timeout_s is not None:
            wrapper += ["--timeout", str(timeout_s)]
        wrapper += ["--"] + [str(c) for c in cmd]
        done = subprocess.run(wrapper, env=dict(env) if env is not None else None, cwd=cwd)
        if done.returncode != 0 and Path(result_path).stat().st_size == 0:
            raise CommandFailed(f"measurement wrapper failed (exit {done.returncode}) for {' '.join(map(str, cmd))}")
        result = json.loads(Path(result_path).read_text())
    finally:
        os.unlink(result_path)
    m = Measurement(command=tuple(str(c) for c in cmd), log=str(log_path), **result)
    if check and m.timed_out:
        raise CommandFailed(f"timed out after {timeout_s:.0f} s: {' '.join(m.command)}\n"
                            f"--- last lines of {log_path} ---\n{log_tail(log_path)}")
    if check and m.returncode != 0:
        raise CommandFailed(f"exit {m.returncode}: {' '.join(m.command)}\n--- last lines of {log_path} ---\n"
                            f"{log_tail(log_path)}")
    return m


def run_untimed(cmd: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
                log_path: str | Path | None = None, timeout_s: float | None = None) -> None:
    """Run a set-up step; raise ``CommandFailed`` with the output tail if it fails or runs past
    ``timeout_s`` seconds (its process tree is then ended). Output is appended to ``log_path``."""
    fd, out_path = tempfile.mkstemp(prefix="bench_", suffix=".log")
    try:
        with os.fdopen(fd, "wb") as out:
            proc = subprocess.Popen([str(c) for c in cmd], env=dict(env) if env is not None else None, cwd=cwd,
                                    stdout=out, stderr=subprocess.STDOUT)
            returncode, timed_out = wait_or_kill(proc, timeout_s)
        output = Path(out_path).read_bytes()
    finally:
        os.unlink(out_path)
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as f:
            f.write(output)
    tail = output.decode(errors="replace")[-3000:]
    if timed_out:
        raise CommandFailed(f"timed out after {timeout_s:.0f} s: {' '.join(map(str, cmd))}\n{tail}")
    if returncode != 0:
        raise CommandFailed(f"exit {returncode}: {' '.join(map(str, cmd))}\n{tail}")


DATA_VARIABLE = "AUTOSEG_BENCH_DATA"  # the folder holding the Decathlon Task04_Hippocampus
NNUNET_VARIABLE = "NNUNET_VENV"  # nnU-Net v2's venv


def hippocampus_task() -> Path | None:
    """``$AUTOSEG_BENCH_DATA/Task04_Hippocampus``, or None where the variable is not set (a script's
    ``--data``/``--source`` default; ``require_folder`` then says what to pass)."""
    root = os.environ.get(DATA_VARIABLE)
    return Path(root) / "Task04_Hippocampus" if root else None


def add_task_option(parser, flag: str = "--data", what: str = "Decathlon task folder") -> None:
    """The option ``flag`` of ``parser``: the Decathlon Task04_Hippocampus folder, by default
    ``$AUTOSEG_BENCH_DATA/Task04_Hippocampus`` (None where that is unset: ``require_folder``)."""
    parser.add_argument(flag, type=Path, default=hippocampus_task(),
                        help=f"{what} (default: ${DATA_VARIABLE}/Task04_Hippocampus)")


def require_folder(path: Path | None, option: str, what: str = "the Decathlon Task04_Hippocampus folder") -> Path:
    """``path`` if it is a folder; else stops the script with a message naming ``option`` and
    ``$AUTOSEG_BENCH_DATA``."""
    if path is None:
        raise SystemExit(f"{what} is not known: pass {option} or set {DATA_VARIABLE} to the folder holding it")
    if not Path(path).is_dir():
        raise SystemExit(f"{what} {path} does not exist: pass {option} or set {DATA_VARIABLE}")
    return Path(path)


def nnunet_bin(venv: str | Path | None = None) -> Path:
    """``bin/`` of nnU-Net v2's venv: ``venv``, else ``$NNUNET_VENV``; stops the script with how to
    make one where neither names a venv with nnU-Net in it."""
    venv = venv or os.environ.get(NNUNET_VARIABLE)
    make = "make one with 'bash bench/setup_nnunet.sh DIR'"
    if not venv:
        raise SystemExit(f"nnU-Net v2's venv is not known: set {NNUNET_VARIABLE} ({make})")
    bin_dir = Path(venv) / "bin"
    if not (bin_dir / "nnUNetv2_plan_and_preprocess").is_file():
        raise SystemExit(f"{venv} has no bin/nnUNetv2_plan_and_preprocess: {make}")
    return bin_dir


def autoseg_executable() -> Path:
    """The ``autoseg`` command beside the Python that runs this script (autoseg's venv)."""
    path = Path(sys.executable).with_name("autoseg")
    if not path.is_file():
        raise SystemExit(f"{path} not found: run the benchmarks with autoseg's venv python (.venv/bin/python)")
    return path


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
            "python": sys.version.split()[0], **cpu_flags()}


def git_commit() -> str:
    """This repository's commit (short), "(with uncommitted changes)" added where tracked files
    differ from it; "unknown" without git or outside a clone (a copied tree)."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=30).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty and head != "unknown" else "")


BF16_FLAGS = ("amx_tile", "avx512_bf16")  # the CPU features autoseg's bf16 choice depends on


def cpu_flags(names: Sequence[str] = BF16_FLAGS) -> dict[str, bool]:
    """Whether each of ``names`` is among the ``flags`` of /proc/cpuinfo (all False if unreadable)."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {name: name in flags for name in names}



def _wrapper_main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(description="measure one command (used by measure(); also handy alone)")
    p.add_argument("--result", default=None, help="write the JSON here (default: print it)")
    p.add_argument("--log", default=os.devnull, help="file for the command's stdout and stderr")
    p.add_argument("--interval", type=float, default=SAMPLE_INTERVAL_S, help="sampling period in seconds")
    p.add_argument("--timeout", type=float, default=None, help="end the command after this many seconds")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        p.error("give a command after --")
    result = _measure_here(cmd, args.log, args.interval, args.timeout)
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
