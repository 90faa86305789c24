"""Process-level settings applied by the command line before any heavy work.

Spiking networks allocate large, short-lived tensors (one per layer per step of T x N images).
With glibc's defaults each of those is a fresh ``mmap`` whose pages fault in again on every use;
measured on a 2-core CPU machine, ESVAE training at T = 16, batch 64 spent about 40% of its time
in page faults and ran 1.7-1.9x faster with the heap kept instead (14.7 -> 28.6 images/s). This
is the in-process equivalent of ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=... MALLOC_TOP_PAD_=1G``.
Set ``ESVAE_NO_MALLOC_TUNING=1`` to keep the defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
ALLOCATOR_TUNED = False  # set by tune_allocator(); recorded in each run's config.json


def tune_allocator() -> bool:
    """Keep freed memory in the heap (glibc only); returns True when applied."""
    if os.environ.get("ESVAE_NO_MALLOC_TUNING") == "1":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return False
    global ALLOCATOR_TUNED
    ALLOCATOR_TUNED = all(
        mallopt(param, value) == 1
        for param, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 1 << 30))
    )
    return ALLOCATOR_TUNED


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what the platform module says."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
