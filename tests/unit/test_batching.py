import threading
from collections.abc import Sequence

import pytest

from conveyor.batching import Combiner


def test_a_lone_caller_gets_its_own_result() -> None:
    combiner: Combiner[int, int] = Combiner(lambda items: [i * 2 for i in items])
    assert combiner.call(21) == 42


def test_concurrent_callers_share_batches_and_each_gets_its_result() -> None:
    batches: list[int] = []
    gate = threading.Event()

    def flush(items: Sequence[int]) -> list[int]:
        gate.wait(1)  # hold the first batch so the others pile up behind it
        batches.append(len(items))
        return [i + 1000 for i in items]

    combiner: Combiner[int, int] = Combiner(flush)
    results: dict[int, int] = {}

    def call(i: int) -> None:
        results[i] = combiner.call(i)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(5)
    assert results == {i: i + 1000 for i in range(20)}
    assert sum(batches) == 20
    assert len(batches) < 20  # at least some calls were combined


def test_an_exception_result_is_raised_to_its_own_caller_only() -> None:
    combiner: Combiner[int, int] = Combiner(lambda items: [ValueError("bad") if i < 0 else i for i in items])
    assert combiner.call(3) == 3
    with pytest.raises(ValueError, match="bad"):
        combiner.call(-1)


def test_a_failing_flush_fails_its_batch_and_the_next_call_still_works() -> None:
    calls = {"n": 0}

    def flush(items: Sequence[int]) -> list[int]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("connection lost")
        return list(items)

    combiner: Combiner[int, int] = Combiner(flush)
    with pytest.raises(RuntimeError):
        combiner.call(1)
    assert combiner.call(2) == 2


def test_with_several_batches_in_flight_every_caller_gets_its_own_result() -> None:
    def flush(items: Sequence[int]) -> list[int]:
        import time

        time.sleep(0.002)
        return [i * 3 for i in items]

    combiner: Combiner[int, int] = Combiner(flush, max_batch=3, max_in_flight=3)
    results: dict[int, int] = {}

    def call(i: int) -> None:
        results[i] = combiner.call(i)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {i: i * 3 for i in range(200)}
