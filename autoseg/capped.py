"""Running a probe in a child process under a wall-clock cap, so that no timing can hang autoseg.

A timing probe (a training step of a candidate network, the bf16 speed probe) can walk into a
pathological kernel: on a CPU with AMX, oneDNN's bf16 backward pass of a ``Conv3d(8, 8, 3)`` on an
input of shape (2, 8, 4, 128, 112) did not finish within 20 s where fp32 took 0.15 s for a whole
U-Net step, and planning waited for it for 22 minutes. A kernel cannot be interrupted from its own
process, so probes run in a child process (``python -m autoseg.capped``) that reports an event after
each piece of work; when no event comes within the cap, the child is killed and the caller is told
(``ProbeTimeout``), never kept waiting.

Protocol (one JSON object per line): the parent writes ``{"target": "module:function", "kwargs":
{...}}``; the child imports ``module``, calls ``function(**kwargs)`` and writes ``{"event": e}`` for
every item the call yields (a generator) or one ``{"event": result}`` for a plain return value, then
``{"done": true}``; an exception becomes ``{"error": "traceback"}``. The child serves calls one after
another until its stdin closes, so torch is imported once for many calls.

Example::

    with CappedChild(threads=2) as child:
        for event in child.call("autoseg.planners.step_timing:time_step_rounds", {...}, cap_s=10):
            ...   # ProbeTimeout if any event takes longer than 10 s
"""
from __future__ import annotations

import importlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Callable, Iterator, Optional, Sequence, Union

# importing torch in a fresh child takes 1.5-3 s on a quiet machine; a loaded one can take far longer
START_CAP_S = 120.0


class ProbeTimeout(Exception):
    """No event came from the child within the cap; the child was killed. ``last_event`` is the last
    event that did come (None: none in this call), ``waited_s`` how long the silence lasted."""

    def __init__(self, target: str, cap_s: float, waited_s: float, last_event: Any):
        super().__init__(f"{target}: nothing within {cap_s:.0f} s (waited {waited_s:.1f} s); probe abandoned")
        self.target, self.cap_s, self.waited_s, self.last_event = target, cap_s, waited_s, last_event


class ProbeFailed(Exception):
    """The probe raised in the child (the child's traceback is the message), or the child died
    (``died``: a native crash such as a double free or a segmentation fault, whose exit code is
    the message)."""

    def __init__(self, message: str, died: bool = False):
        super().__init__(message)
        self.died = died


class CappedChild:
    """A child Python process serving probe calls, each event of which must come within a cap.

    ``threads``: torch threads in the child (``torch.set_num_threads``), so that it computes as the
    training will. ``python_path``: folders the child puts in front of ``sys.path`` (tests use it to
    reach probe functions of their own). The child starts at the first call and again after a kill."""

    def __init__(self, threads: Optional[int] = None, python_path: Sequence[str] = (), start_cap_s: float = START_CAP_S):
        self.threads, self.python_path, self.start_cap_s = threads, tuple(str(p) for p in python_path), start_cap_s
        self._proc: Optional[subprocess.Popen] = None
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._fresh = False  # the child has served no call yet (its first event also waits for imports)

    def __enter__(self) -> "CappedChild":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(list(self.python_path) + [p for p in [env.get("PYTHONPATH")] if p])
        args = [sys.executable, "-m", "autoseg.capped"] + ([str(self.threads)] if self.threads else [])
        self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                      env=env)
        self._lines = queue.Queue()
        reader = threading.Thread(target=_pump, args=(self._proc.stdout, self._lines), daemon=True)
        reader.start()
        self._fresh = True

    def call(self, target: str, kwargs: dict, cap_s: Union[float, Callable[[Any], float]]) -> Iterator[Any]:
        """The events of ``target(**kwargs)`` run in the child, each within ``cap_s`` seconds of the one
        before (the first also gets ``start_cap_s`` for a new child's imports). ``cap_s`` may be a
        function of the last event (None before the first) giving the cap for the next one, so that a
        step announced by an event gets a cap of its own. Raises ``ProbeTimeout`` (child killed) or
        ``ProbeFailed``."""
        cap_for = cap_s if callable(cap_s) else (lambda _event: cap_s)
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"target": target, "kwargs": kwargs}) + "\n")
        self._proc.stdin.flush()
        last = None
        limit = cap_for(None) + (self.start_cap_s if self._fresh else 0.0)
        self._fresh = False
        while True:
            waited = time.perf_counter()
            try:
                line = self._lines.get(timeout=limit)
            except queue.Empty:
                self.kill()
                raise ProbeTimeout(target, limit, time.perf_counter() - waited, last) from None
            if line is None:  # the child's stdout closed: it died
                code = self._proc.wait()
                self._proc = None
                raise ProbeFailed(f"{target}: the probe process ended with exit code {code}", died=True)
            message = json.loads(line)
            if "error" in message:
                raise ProbeFailed(f"{target} failed in the probe process:\n{message['error']}")
            if message.get("done"):
                return
            last = message["event"]
            limit = cap_for(last)
            yield last

    def kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def close(self) -> None:
        """Ends the child: stdin closed (it exits), killed if it has not within 5 s."""
        if self._proc is None:
            return
        try:
            if self._proc.stdin:
                self._proc.stdin.close()
            self._proc.wait(timeout=5)
        except (subprocess.TimeoutExpired, OSError):
            self._proc.kill()
            self._proc.wait()
        self._proc = None


def call_capped(target: str, kwargs: dict, cap_s: float, threads: Optional[int] = None) -> list:
    """Every event of one call in a child of its own (``CappedChild.call``), as a list."""
    with CappedChild(threads) as child:
        return list(child.call(target, kwargs, cap_s))


def _pump(stream, lines: "queue.Queue[Optional[str]]") -> None:
    for line in stream:
        if line.strip():
            lines.put(line)
    lines.put(None)


def _serve(threads: Optional[int]) -> None:
    """The child's loop: one call per line of stdin, its events on stdout (see the module docstring)."""
    out = sys.stdout
    sys.stdout = sys.stderr  # a probe's own prints must not corrupt the protocol
    if threads:
        import torch

        torch.set_num_threads(threads)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            module, _, name = request["target"].partition(":")
            result = getattr(importlib.import_module(module), name)(**request["kwargs"])
            events = result if hasattr(result, "__next__") else iter([result])
            for event in events:
                out.write(json.dumps({"event": event}) + "\n")
                out.flush()
            out.write(json.dumps({"done": True}) + "\n")
        except Exception:  # reported to the parent, which raises ProbeFailed with it
            out.write(json.dumps({"error": traceback.format_exc()}) + "\n")
        out.flush()


if __name__ == "__main__":
    _serve(int(sys.argv[1]) if len(sys.argv) > 1 else None)
