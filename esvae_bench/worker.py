"""One implementation in a process of its own, timed call by call from the bench's process.

``python -m esvae_bench.worker MODEL SETTING T BATCH IMPL ALLOCATOR THREADS [OVERRIDES_JSON]`` sets
glibc's allocator (before torch is imported), builds the benchmark's pair
(:func:`esvae_bench.build_pair`: the same weights, images and random draws as the bench's own copy)
and answers one line per request read from stdin: a mode (``train``, ``eval`` or ``sample``) runs
one call of ``IMPL`` and prints ``{"seconds": s, "digest": d}`` (``d``: the loss of a training step,
the sum of the reconstructions or of the generated images, to check what ran); end of input ends it.

Why a process per implementation: in one process the two share glibc's heap. With the heap kept,
the naive port's 3-4 GB of freed blocks stay in it and our calls are served from them, which is not
how ``esvae train`` runs (our model alone, on a heap of its own); on 2026-12-06 (AMD EPYC, 2 cores)
that measured our ESVAE training step at 0.59-0.87 s against 0.46-0.52 s alone. The bench still
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
from typing import Optional

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


def _digest(mode: str, result) -> float:
    from . import _get

    if mode == "train":
        return float(result[1]["loss"].detach())
    if mode == "eval":
        return float(_get(result, "reconstruction").double().sum())
    return float(result.double().sum())


def _main(argv) -> int:
    model, setting, timesteps, batch, impl, allocator, threads = argv[:7]
    overrides = json.loads(argv[7]) if len(argv) > 7 else None
    error = prepare_process(allocator, threads)
    if error:
        print(json.dumps({"error": error}), flush=True)
        return 2
    from . import build_pair

    pair = build_pair(model, setting, int(timesteps), int(batch), overrides=overrides)
    calls = {mode: pair.call(impl, mode) for mode in MODES}
    for line in sys.stdin:
        mode = line.strip()
        if mode not in calls:
            print(json.dumps({"error": f"unknown mode {mode!r} (train, eval or sample)"}), flush=True)
            return 2
        start = time.perf_counter()
        result = calls[mode]()
        seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds, "digest": _digest(mode, result)}), flush=True)
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
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=dict(os.environ)
        )

    def call(self, mode: str) -> dict:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(mode + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass  # the process ended: its reason is read below
        line = self._proc.stdout.readline()
        reply = json.loads(line) if line.startswith("{") else {}
        if "seconds" not in reply:
            self.close()
            self._stderr.seek(0)
            lines = self._stderr.read().strip().splitlines()
            why = reply.get("error") or (lines[-1] if lines else f"exit status {self._proc.returncode}, no output")
            raise MeasurementError(f"timing process for {self.what} failed: {why}")
        return reply

    def close(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        self._stderr.close()


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
