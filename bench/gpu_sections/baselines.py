"""The ``seed`` and ``compile`` sections: diffusers' own adapter cycle on the bare model, and
``torch.compile`` over the static slot (graphs, recompiles across switches)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from loraplex.worker.slot import LoraSlot

if TYPE_CHECKING:  # gpu.py runs as __main__: importing it here at run time would load it twice
    from gpu import Run


@torch.no_grad()
def seed(run: Run) -> dict[str, Any]:
    """The seed's cycle on the same adapter, through diffusers' PeftAdapterMixin."""
    assert run.slot is not None
    run.slot.deactivate()
    state = {}
    for name, (a, b, _scale) in run.a_weights.items():
        path = name.split(".", 1)[1]
        state[f"{path}.lora_A.weight"], state[f"{path}.lora_B.weight"] = a, b
    model = run.model
    phases: dict[str, Callable[[], object]] = {
        "load": lambda: model.load_lora_adapter(state, prefix=None, adapter_name="seed"),
        "fuse": model.fuse_lora,
        "unfuse": model.unfuse_lora,
        "unload": model.unload_lora,
    }
    times: dict[str, list[float]] = {k: [] for k in phases}
    for _ in range(run.args.seed_reps):
        for phase, fn in phases.items():
            times[phase].append(run.timed(fn))
    cycles = [sum(t[i] for t in times.values()) for i in range(run.args.seed_reps)]
    out: dict[str, Any] = {f"seed_{k}_ms": round(statistics.median(v), 2) for k, v in times.items()}
    out["seed_cycle_ms"] = round(statistics.median(cycles), 2)
    if "switch_ms" in run.out:
        out["seed_over_switch"] = round(out["seed_cycle_ms"] / run.out["switch_ms"], 1)
    if run.saved is not None:
        weights = [mod.weight for mod in run.modules().values()]
        out["seed_base_bit_exact"] = all(
            torch.equal(w, s) for w, s in zip(weights, run.saved, strict=True)
        )
        torch._foreach_copy_(weights, run.saved)  # the base as it was, for what follows
        run.saved = None
    return out


def _switches(run: Run, model: Any, slot: LoraSlot, counters: Any) -> tuple[int, int]:
    """After a warm-up call with adapter B: dynamo's unique graphs so far, and how many more 5
    adapter switches + base calls add (0 when switches are data, as they should be)."""
    slot.load(run.b)
    model(**run.inputs[0])
    graphs = counters["stats"]["unique_graphs"]
    for i in range(5):
        slot.load(run.a if i % 2 else run.b)
        model(**run.inputs[i % len(run.inputs)])
        slot.deactivate()
        model(**run.inputs[0])
    run.sync()
    return graphs, counters["stats"]["unique_graphs"] - graphs


@torch.no_grad()
def compiled(run: Run) -> dict[str, Any]:
    """torch.compile over the static slot: two graphs (slot on, base), then switches are data."""
    from torch._dynamo.utils import counters

    assert run.slot is not None and run.layout is not None and run.a and run.b
    run.slot.remove()
    slot = LoraSlot(run.modules(), run.layout, dtype=run.dtype, device=run.device, static=True)
    run.slot = slot
    run.a.plan = run.b.plan = None  # copy plans point into the previous slot's buffer
    static_switch_ms = run.median_ms(lambda: slot.load(run.a), run.args.switch_reps)
    torch._dynamo.reset()
    model = torch.compile(run.model, backend=run.args.compile_backend)
    graphs_before, start = counters["stats"]["unique_graphs"], time.perf_counter()
    breaks_before = sum(counters["graph_break"].values())
    slot.activate_empty()
    run.timed(lambda: model(**run.inputs[0]))
    slot.deactivate()
    run.timed(lambda: model(**run.inputs[0]))
    compile_s = time.perf_counter() - start
    slot.load(run.a)
    eager, compiled_ms = run.gen_ms(), run.gen_ms(model)
    graphs, recompiles = _switches(run, model, slot, counters)
    slot.remove()
    torch._dynamo.reset()
    return {
        "compile_backend": run.args.compile_backend,
        "static_switch_ms": static_switch_ms,  # no hook attach/detach: copies only
        "compile_s": round(compile_s, 2),
        "eager_gen_ms": eager,
        "compiled_gen_ms": compiled_ms,
        "compile_speedup": round(eager / compiled_ms, 3),
        "graphs": graphs - graphs_before,
        "graph_breaks": sum(counters["graph_break"].values()) - breaks_before,
        "recompiles_across_switches": recompiles,
    }
