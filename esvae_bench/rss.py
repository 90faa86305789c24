"""Peak resident memory of one implementation's calls, as the OS sees it, in a process of its own.

``python -m esvae_bench.rss MODEL DATASET T BATCH IMPL MODE ALLOCATOR CALLS THREADS [OVERRIDES_JSON]``
builds the benchmark's
pair of models (:func:`esvae_bench.build_pair`: both implementations, so every measurement starts
from the same process state), runs ``CALLS`` calls of ``IMPL``'s ``MODE`` and prints one JSON line:
``VmHWM`` (the process's peak resident set, every page it held at once: tensors, the allocator's
kept heap, libraries, thread stacks) and ``VmRSS`` just before the first call (the same for both
implementations: Python, torch and the two small models). The allocator setting is applied after
torch is imported and before the models are built; the first call of ours also loads (or, without
a writable cache, compiles) the numba kernels, which counts against ours. :func:`peak_rss` runs it
and reads the line back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict, Optional

from .worker import MeasurementError, prepare_process


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _main(argv) -> int:
    model, setting, timesteps, batch, impl, mode, allocator, calls, threads = argv[:9]
    overrides = json.loads(argv[9]) if len(argv) > 9 else None
    error = prepare_process(allocator, threads)
    if error:
        print(json.dumps({"error": error}))
        return 2
    from . import build_pair

    pair = build_pair(model, setting, int(timesteps), int(batch), overrides=overrides)
    before = _status_kib("VmRSS")
    call = pair.call(impl, mode)
    for _ in range(int(calls)):
        call()
    print(json.dumps({"vmhwm_bytes": _status_kib("VmHWM") * 1024, "rss_before_bytes": before * 1024}))
    return 0


def peak_rss(
    model: str,
    setting: str,
    timesteps: int,
    batch: int,
    impl: str,
    mode: str,
    allocator: str,
    calls: int = 3,
    overrides: Optional[dict] = None,
) -> Dict[str, int]:
    """``{"vmhwm_bytes", "rss_before_bytes"}`` of a fresh process running ``calls`` calls (Linux)."""
    import torch

    if not os.path.exists("/proc/self/status"):
        raise MeasurementError("peak resident memory needs Linux's /proc/self/status")
    cmd = [
        sys.executable,
        "-m",
        "esvae_bench.rss",
        model,
        setting,
        str(timesteps),
        str(batch),
        impl,
        mode,
        allocator,
        str(calls),
        str(torch.get_num_threads()),
    ] + ([json.dumps(overrides)] if overrides else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    out = json.loads(lines[-1]) if lines else {}
    if done.returncode != 0 or "vmhwm_bytes" not in out:
        tail = (
            out.get("error") or (done.stderr.strip().splitlines() or [f"exit status {done.returncode}, no output"])[-1]
        )
        raise MeasurementError(f"peak-memory process for {model} {impl} {mode} ({allocator}) failed: {tail}")
    return out


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
