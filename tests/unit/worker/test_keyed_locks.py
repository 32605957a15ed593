"""KeyedLocks: one holder per key at a time, other keys free, nothing left behind."""

from __future__ import annotations

import threading

from loraplex.worker.keyed_locks import KeyedLocks

DEADLINE_S = 5.0


def test_a_second_holder_of_the_same_key_waits_and_other_keys_do_not() -> None:
    locks = KeyedLocks()
    inside, release = threading.Event(), threading.Event()
    order: list[str] = []

    def first() -> None:
        with locks.hold("a"):
            order.append("first in")
            inside.set()
            assert release.wait(DEADLINE_S)
            order.append("first out")

    def second() -> None:
        with locks.hold("a"):
            order.append("second in")

    t1 = threading.Thread(target=first)
    t1.start()
    assert inside.wait(DEADLINE_S)
    t2 = threading.Thread(target=second)
    t2.start()
    with locks.hold("b"):  # another key while "a" is held: no wait
        order.append("other key")
    release.set()
    t1.join(DEADLINE_S)
    t2.join(DEADLINE_S)
    assert order == ["first in", "other key", "first out", "second in"]
    assert len(locks) == 0  # the gate of "a" went once nobody held or waited for it


def test_the_gate_is_released_when_the_body_raises() -> None:
    locks = KeyedLocks()
    try:
        with locks.hold("a"):
            raise ValueError("boom")
    except ValueError:
        pass
    assert len(locks) == 0
    with locks.hold("a"):  # not stuck
        assert len(locks) == 1
