"""Keep the worker's RSS flat while adapters come and go (the creep of diffusers#8532).

Converted adapters are tens of MB each and the host tier evicts and re-reads them all day. With
glibc's default *dynamic* mmap threshold, the first free of such a block raises the threshold
to its size, so later same-sized blocks come from the heap, whose freed holes are rarely given
back: RSS creeps up by hundreds of MB over a few thousand switches (measured here with
``bench/adapter_switch.py``: +10% before this, see docs/worker.md for after). Pinning the threshold
(``mallopt``) keeps every block above it in its own mmap, returned to the OS on free.

Only glibc has ``mallopt``; elsewhere (musl, macOS) this does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks of 1 MiB and more get their own mmap: adapter tensors and safetensors reads, not the
# many small Python/torch allocations (mmap per small block would cost syscalls).
MMAP_THRESHOLD_BYTES = 1 << 20
TRIM_THRESHOLD_BYTES = 64 << 20


def pin_malloc_thresholds() -> bool:
    """Fix glibc's mmap and trim thresholds for this process; True when applied."""
    name = ctypes.util.find_library("c")
    if name is None:
        log.info("no C library found; malloc thresholds left as they are")
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        log.info("C library has no mallopt (not glibc); malloc thresholds left as they are")
        return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok
    return ok
