"""Progress bars that count bytes and print nothing, for huggingface_hub's ``tqdm_class``.

``snapshot_download`` and ``hf_hub_download`` take a ``tqdm_class``; :func:`counting_bars`
builds one whose bars are disabled tqdm bars (no output, no monitor thread; so it works with
``HF_HUB_DISABLE_PROGRESS_BARS=1``) that pass every byte count to ``sink(bar, done, total)``.
Bars of other units (huggingface_hub's count of files) are ignored. Several threads update
the bars of one snapshot download at once: counts change under a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any

from tqdm import tqdm

BarSink = Callable[[Hashable, int, int | None], None]


class _CountingBar(tqdm):
    """A disabled bar that reports its byte count; :func:`counting_bars` binds ``sink``."""

    sink: BarSink
    count_lock = threading.Lock()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("name", None)  # huggingface_hub passes it to its own bar class only
        self.counts_bytes = kwargs.get("unit") == "B"
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)
        self._report()

    def update(self, n: float | None = 1) -> bool | None:
        with self.count_lock:
            self.n += n or 0
        self._report()
        return None

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        self._report()  # huggingface_hub refreshes after it changed the total

    @property
    def format_dict(self) -> dict[str, Any]:  # a disabled tqdm has no display attributes
        return {"n": self.n, "total": self.total, "rate": None, "unit": "B"}

    def _report(self) -> None:
        if self.counts_bytes:
            total = int(self.total) if self.total else None
            self.sink(id(self), int(self.n), total)


def counting_bars(sink: BarSink) -> type[tqdm]:
    """A ``tqdm_class`` whose byte bars report to ``sink(bar id, bytes done, total or None)``."""
    return type("CountingBar", (_CountingBar,), {"sink": staticmethod(sink)})
