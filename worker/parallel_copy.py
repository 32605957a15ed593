"""A switch's copies spread over threads on CPU, where one multi-tensor copy runs on one core.

Why: ``torch._foreach_copy_`` on CPU is a loop of copies, and a copy below torch's parallel
grain (32k elements — most of an adapter's A_r / Bt_r pieces below the slot's rank) runs on the
calling thread only, while a plain memcpy of the same bytes uses every intra-op thread. Measured
here (2 cores, 600 pieces of 10k floats): the multi-tensor copy 2.2–2.5× a memcpy of the same
bytes, split over two threads 1.3–1.4×. Torch releases the GIL inside the copy, so Python
threads run the halves in parallel. On CUDA the multi-tensor copy is already one launch list:
nothing to split there (:func:`copier_for` returns None).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

# Below this many elements in all, one thread copies: a thread hand-off costs ~20-50 µs, more
# than it saves on small adapters.
MIN_SPLIT_ELEMENTS = 1 << 20
# torch's intra-op parallel grain: a copy at least this big already runs on every thread, so
# a list made mostly of such pieces (merged runs: an adapter at the slot's rank) is not split —
# two Python threads each running a parallel copy would only oversubscribe the cores.
TORCH_GRAIN_ELEMENTS = 32768

Pieces = tuple[list[torch.Tensor], list[torch.Tensor]]


class ParallelCopy:
    """Copies ``dst[i] ← src[i]`` as ``threads`` balanced parts, one on the calling thread."""

    def __init__(self, threads: int, min_elements: int = MIN_SPLIT_ELEMENTS) -> None:
        if threads < 2:
            raise ValueError(f"a parallel copy needs at least 2 threads, got {threads}")
        self.threads = threads
        self.min_elements = min_elements
        self._pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="loraplex-copy")

    def split(self, dst: Sequence[torch.Tensor], src: Sequence[torch.Tensor]) -> list[Pieces]:
        """The pieces cut into up to ``threads`` parts of about equal elements (in order);
        one part when the whole is below ``min_elements`` or most of it is in pieces torch
        already copies on every thread."""
        sizes = [t.numel() for t in dst]
        total = sum(sizes)
        small = sum(n for n in sizes if n < TORCH_GRAIN_ELEMENTS)
        if total < self.min_elements or len(dst) < 2 or 2 * small < total:
            return [(list(dst), list(src))]
        parts: list[Pieces] = []
        start = 0
        for cut, done in enumerate(itertools.accumulate(sizes), start=1):
            if done * self.threads >= total * (len(parts) + 1) and cut > start:
                parts.append((list(dst[start:cut]), list(src[start:cut])))
                start = cut
        if start < len(dst):
            parts.append((list(dst[start:]), list(src[start:])))
        return parts

    def run(self, parts: Sequence[Pieces]) -> None:
        """Copy every part: all but the first on the pool, the first here; then wait."""
        futures = [self._pool.submit(torch._foreach_copy_, d, s) for d, s in parts[1:]]
        torch._foreach_copy_(*parts[0])
        for future in futures:
            future.result()  # re-raises a failed copy here

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def copier_for(device: torch.device) -> ParallelCopy | None:
    """A parallel copier for a CPU slot with several intra-op threads; None otherwise."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2:
        return None
    return ParallelCopy(threads)
