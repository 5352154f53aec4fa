"""$ZRL_DRILL, the test-only fault drills the Worker base runs: which worker it names, and what a malformed one says."""

from __future__ import annotations

import logging

import pytest

from zrl.workers.drills import DRILL_ENV, Drill, drill_for


def test_a_drill_names_its_worker_and_when_it_runs():
    environ = {DRILL_ENV: "trainer/0:hang@2, producer/1:fail@0"}
    assert drill_for("trainer/0", environ) == Drill("hang", 2)
    assert drill_for("producer/1", environ) == Drill("fail", 0)
    assert drill_for("producer/0", environ) is None and drill_for("trainer/0", {}) is None


@pytest.mark.parametrize("entry", ["trainer/0:explode@2", "trainer/0:hang", "trainer/0:hang@two", "trainer/0"])
def test_a_malformed_drill_is_an_error_naming_it(entry: str):
    with pytest.raises(ValueError, match=f"ZRL_DRILL: '{entry}' is not WORKER:ACTION@N"):
        drill_for("trainer/0", {DRILL_ENV: entry})


def test_a_fail_drill_raises_once_its_batches_are_done():
    drill = Drill("fail", 2)
    drill.run_if_due(1, logging.getLogger("test"))  # not yet
    with pytest.raises(RuntimeError, match="drill: fail after 2 batches"):
        drill.run_if_due(2, logging.getLogger("test"))
