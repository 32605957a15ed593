"""ParallelCopy: balanced parts in order, every piece copied once, results equal one thread's."""

from __future__ import annotations

import torch
from loraplex.worker.parallel_copy import ParallelCopy, copier_for


def pieces(sizes: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(0)
    return [torch.zeros(n) for n in sizes], [torch.randn(n) for n in sizes]


def test_parts_are_balanced_in_order_and_cover_every_piece_once() -> None:
    copier = ParallelCopy(threads=2, min_elements=0)
    dst, src = pieces([5, 1, 1, 1, 1, 1])  # 10 elements: the first part holds half of them
    parts = copier.split(dst, src)
    assert [len(d) for d, _ in parts] == [1, 5]
    flat = [t for d, _ in parts for t in d]
    assert len(flat) == len(dst) and all(a is b for a, b in zip(flat, dst, strict=True))
    copier.close()


def test_small_copies_and_copies_torch_already_parallelizes_stay_one_part() -> None:
    copier = ParallelCopy(threads=4, min_elements=1000)
    dst, src = pieces([10] * 20)
    assert len(copier.split(dst, src)) == 1  # too little in all
    dst, src = pieces([40_000, 40_000, 1000])  # mostly above torch's own parallel grain
    assert len(copier.split(dst, src)) == 1
    copier.close()


def test_a_split_copy_writes_exactly_what_a_single_copy_writes() -> None:
    copier = ParallelCopy(threads=3, min_elements=0)
    dst, src = pieces([7, 300, 2, 2, 900, 40, 1, 1, 512])
    parts = copier.split(dst, src)
    assert len(parts) == 3
    copier.run(parts)
    assert all(torch.equal(d, s) for d, s in zip(dst, src, strict=True))
    copier.close()


def test_only_a_cpu_device_with_several_threads_gets_a_copier() -> None:
    assert copier_for(torch.device("meta")) is None
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert copier_for(torch.device("cpu")) is None
        torch.set_num_threads(2)
        copier = copier_for(torch.device("cpu"))
        assert copier is not None and copier.threads == 2
        copier.close()
    finally:
        torch.set_num_threads(threads)


def test_a_slot_switch_split_over_threads_fills_the_slot_as_one_thread_does() -> None:
    from loraplex.worker.slot import LoraSlot, SlotLayout
    from torch import nn

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = nn.Sequential(*(nn.Linear(256, 256) for _ in range(40)))
        layout = SlotLayout.for_components({"unet": model}, rank=128)
        modules = {f"unet.{n}": m for n, m in model.named_modules()}
        cpu, f32 = torch.device("cpu"), torch.float32
        split = LoraSlot(modules, layout, dtype=f32, device=cpu)
        single = LoraSlot(modules, layout, dtype=f32, device=cpu)
        single._copier = None
        torch.manual_seed(0)
        weights = {  # rank 64 < the slot's 128: one 16k piece per A_r and Bt_r, 1.3 M in all
            f"unet.{i}": (torch.randn(64, 256), torch.randn(256, 64), 0.5) for i in range(40)
        }
        for slot in (split, single):
            slot.load(layout.pack(weights, dtype=f32))
        assert split.current is not None and split.current.plan is not None
        assert len(split.current.plan.parts or []) == 2
        assert torch.equal(split.buffer, single.buffer)
    finally:
        torch.set_num_threads(threads)
