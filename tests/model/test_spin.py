"""The protocol model (model/conveyor.pml) holds its properties under Spin, and the model catches
the real bugs: without the attempt fence, or without the outbox, Spin finds a counterexample."""

from __future__ import annotations

import pytest

from tests.model.spin import ONE_CRASHING_FOREIGN_WORKER, ONE_CRASHING_WORKER, TWO_WORKERS_LEASES_LAPSE, verify

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("defines", [ONE_CRASHING_WORKER, TWO_WORKERS_LEASES_LAPSE, ONE_CRASHING_FOREIGN_WORKER],
                         ids=["crash", "lapse", "foreign"])
def test_the_protocol_model_violates_no_property(defines: tuple[str, ...]) -> None:
    check = verify(defines)
    assert check.violated is None, f"{check.violated}:\n{check.output[-3000:]}"
    assert check.complete and check.states > 10_000, check.output[-3000:]


def test_without_the_fence_a_stale_owner_overwrites_a_newer_attempt() -> None:
    check = verify((*TWO_WORKERS_LEASES_LAPSE, "-DNOFENCE"))
    assert check.violated == "P2 twice / P3 fence", check.output[-3000:]


def test_without_the_fence_the_center_applies_a_foreign_workers_stale_report() -> None:
    check = verify((*ONE_CRASHING_FOREIGN_WORKER, "-DNOFENCE"))
    assert check.violated == "P2 twice / P3 fence", check.output[-3000:]


def test_without_the_outbox_a_crashed_submitter_leaves_a_task_stuck() -> None:
    check = verify((*ONE_CRASHING_WORKER, "-DNOOUTBOX"))
    assert check.violated == "P4 stuck", check.output[-3000:]
