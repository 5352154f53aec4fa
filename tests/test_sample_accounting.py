"""The trainer's sample counters and what a trainer that takes over from a checkpoint counts as lost."""

from __future__ import annotations

from zrl.rl.sample_accounting import SampleAccounting

KEYS = ["received", "trained", "dropped_stale", "dropped_dynamic", "garbage", "lost"]


def test_the_counters_keep_the_keys_of_the_status_reply_and_the_checkpoint():
    assert list(SampleAccounting().as_dict()) == KEYS
    stored = {**SampleAccounting(received=9, trained=4).as_dict(), "buffered": 5}
    assert SampleAccounting.from_dict(stored) == SampleAccounting(received=9, trained=4)
    assert SampleAccounting.from_dict({}) == SampleAccounting()


def test_trees_buffered_at_the_checkpoint_and_received_after_it_are_lost():
    checkpoint = SampleAccounting(received=40, trained=16, dropped_stale=8, lost=3)
    resumed, lost = checkpoint.taken_over(buffered=16, received=56, garbage=1)
    assert lost == 32
    assert resumed == SampleAccounting(received=56, trained=16, dropped_stale=8, garbage=1, lost=35)
    assert checkpoint.received == 40  # the checkpoint's counters are left as they were


def test_without_a_count_of_what_was_received_only_the_buffered_trees_are_lost():
    resumed, lost = SampleAccounting(received=40, garbage=2).taken_over(buffered=8, received=None, garbage=0)
    assert lost == 8 and (resumed.received, resumed.garbage, resumed.lost) == (40, 2, 8)
