"""One implementation in a process of its own, timed call by call from the bench's process.

``python -m esvae_bench.worker MODEL SETTING T BATCH IMPL ALLOCATOR THREADS [OVERRIDES_JSON]`` sets
glibc's allocator (``mallopt``, before the models are built and any call runs, as ``esvae train``
does), builds the benchmark's pair (:func:`esvae_bench.build_pair`: the same weights, images and
random draws as the bench's own copy) and answers one line per request read from stdin: a mode
(``train``, ``eval`` or ``sample``) runs one call of ``IMPL`` and writes ``{"seconds": s}``, with
``"loss"`` added for a training step (the bench checks the first against its own copy); end of input
ends it. The replies go to the file descriptor stdout had at the
start; anything a library prints goes to stderr.

Why a process per implementation: in one process the two share glibc's heap. With the heap kept,
the naive port's 3-4 GB of freed blocks stay in it and our calls are served from them, which is not
how ``esvae train`` runs (our model alone, on a heap of its own); on 2026-12-06 (AMD EPYC, 2 cores)
our ESVAE evaluation call, heap kept, took 0.15-0.25 s there against about 0.08 s in a process of
its own (the committed reports are of processes of their own). The bench still
calls the two in turn (one request at a time; the other process waits on its pipe, using no CPU), so
a slow spell of the machine hits both. :class:`Worker` is the bench's side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

from esvae.errors import EsvaeError

MODES = ("train", "eval", "sample")


class MeasurementError(EsvaeError):
    """A measurement could not be taken (one line for the user; the bench's other results are kept)."""


def prepare_process(allocator: str, threads: str) -> Optional[str]:
    """The allocator setting, then torch with ``threads`` threads; an error message, or None."""
    if allocator == "tuned":
        from esvae.runtime import tune_allocator

        if not tune_allocator():
            return "the heap-kept setting needs glibc's mallopt"
    elif allocator != "default":
        return f"unknown allocator setting {allocator!r} (default or tuned)"
    import torch  # after the allocator setting

    torch.set_num_threads(int(threads))
    return None


def _main(argv) -> int:
    replies = os.fdopen(os.dup(1), "w", buffering=1)  # the replies' channel; stdout itself ...
    os.dup2(2, 1)  # ... goes to stderr, so that nothing a library prints is read as a reply
    sys.stdout = sys.stderr
    model, setting, timesteps, batch, impl, allocator, threads = argv[:7]
    overrides = json.loads(argv[7]) if len(argv) > 7 else None
    error = prepare_process(allocator, threads)
    if error:
        replies.write(json.dumps({"error": error}) + "\n")
        return 2
    from . import build_pair

    pair = build_pair(model, setting, int(timesteps), int(batch), overrides=overrides)
    calls = {mode: pair.call(impl, mode) for mode in MODES}
    for line in sys.stdin:
        mode = line.strip()
        if mode not in calls:
            replies.write(json.dumps({"error": f"unknown mode {mode!r} (train, eval or sample)"}) + "\n")
            return 2
        start = time.perf_counter()
        result: Any = calls[mode]()
        seconds = time.perf_counter() - start
        reply = {"seconds": seconds}
        if mode == "train":
            reply["loss"] = float(result[1]["loss"].detach())
        del result  # freed here, not inside the next timed call
        replies.write(json.dumps(reply) + "\n")
    return 0


class Worker:
    """The bench's handle on a worker process: ``call(mode)`` -> the reply of one call; a context
    manager that ends the process. Its stderr goes to a temporary file (a full pipe would block it);
    a failure raises :class:`MeasurementError` with the process's last line of output."""

    def __init__(
        self,
        model: str,
        setting: str,
        timesteps: int,
        batch: int,
        impl: str,
        allocator: str,
        threads: int,
        overrides: Optional[dict] = None,
    ):
        self.what = f"{model} T={timesteps} {impl} ({allocator})"
        cmd = [sys.executable, "-m", "esvae_bench.worker", model, setting, str(timesteps), str(batch), impl]
        cmd += [allocator, str(threads)] + ([json.dumps(overrides)] if overrides else [])
        self._stderr = tempfile.TemporaryFile(mode="w+", errors="replace")
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )

    def call(self, mode: str) -> dict:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(mode + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass  # the process ended: its reason is read below
        line = self._proc.stdout.readline()
        try:
            reply = json.loads(line) if line.strip() else {}
        except ValueError:
            reply = {"error": f"not a reply: {line.strip()[:200]!r}"}
        if not isinstance(reply, dict) or "seconds" not in reply:
            self.close()  # its input ends: a live process leaves its loop, so the exit status is its own
            why = reply.get("error") if isinstance(reply, dict) else None
            raise MeasurementError(f"timing process for {self.what} failed: {why or self._last_error()}")
        return reply

    def _last_error(self) -> str:
        """The process's exit status and its last traceback line (else its last line of stderr)."""
        self._stderr.seek(0)
        lines = [line for line in self._stderr.read().splitlines() if line.strip()]
        errors = [line for line in lines if not line.startswith(" ") and ("Error" in line or "error" in line)]
        last = (errors or lines or ["no output"])[-1].strip()
        return f"exit status {self._proc.returncode}; {last}"

    def close(self, terminate: bool = False) -> None:
        """End the process: end of input (it finishes its call), or at once with ``terminate``."""
        if terminate and self._proc.poll() is None:
            self._proc.terminate()
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None and not pipe.closed:
                try:
                    pipe.close()
                except BrokenPipeError:
                    pass
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(terminate=exc_type is not None)
        self._stderr.close()


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
