"""Keeping the device generating (issue 13): prefetch, batching and exact fused serving.

One JSON line with the figures of three parts, each measured side by side in one run (its
arms interleaved, medians), each part in ``bench/throughput/`` with its method in its
docstring:

* ``throughput/prefetch.py`` — device seconds spent switching per request for a queue over
  cold adapters from a bandwidth-limited local Hub, prefetch off vs on (``prefetch_speedup``);
* ``throughput/batching.py`` — images/s on a same-adapter stream, one at a time vs batched
  (``batch_speedup``), and the batch-size curve;
* ``throughput/merge.py`` — generation time with the slot's hooks and with the adapter fused,
  against the bare base (``hook_overhead_pct``, ``fused_overhead_pct``), ``fuse_ms`` /
  ``restore_ms``, and ``restore_bit_exact`` after 100 fuse/restore cycles (computed, not
  asserted).

``--only prefetch|batching|merge`` runs one part.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import torch
from diffusers.utils import logging as diffusers_logging
from throughput import batching, merge, prefetch

PARTS: dict[str, Callable[[], dict]] = {
    "prefetch": prefetch.measure,
    "batching": batching.measure,
    "merge": merge.measure,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=sorted(PARTS), help="run one part")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    diffusers_logging.set_verbosity_error()
    result: dict[str, object] = {}
    for name, measure in PARTS.items():
        if args.only in (None, name):
            figures = measure()
            print(f"{name}: {json.dumps(figures)}", file=sys.stderr)
            result.update(figures)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
