"""The polling helper says what it last saw when it gives up."""

from __future__ import annotations

import pytest

from tests.helpers import eventually


async def test_the_last_assertion_is_raised_again_with_its_message() -> None:
    seen: list[int] = []

    async def grows_to_ten() -> None:
        seen.append(len(seen))
        assert seen[-1] >= 10**6, f"count is {seen[-1]}"

    with pytest.raises(AssertionError) as failed:
        await eventually(grows_to_ten, within=0.2, interval=0.01)
    assert str(failed.value).splitlines()[0] == f"count is {seen[-1]}"  # the last one
    assert len(seen) > 2
    assert any("still failing after" in note for note in failed.value.__notes__)


async def test_a_check_that_passes_later_returns() -> None:
    tries: list[None] = []

    def third_time() -> None:
        tries.append(None)
        assert len(tries) >= 3

    await eventually(third_time, within=5, interval=0.01)
    assert len(tries) == 3


async def test_bool_checks_still_work_and_are_named_on_time_out() -> None:
    calls: list[None] = []

    async def second_call_is_true() -> bool:
        calls.append(None)
        return len(calls) >= 2

    await eventually(second_call_is_true, within=5, interval=0.01)

    async def never() -> bool:
        """The flag never goes up."""
        return False

    with pytest.raises(AssertionError, match=r"never: The flag never goes up\. \(eventually"):
        await eventually(never, within=0.1, interval=0.01)


async def test_other_errors_are_not_retried() -> None:
    calls: list[None] = []

    async def broken() -> bool:
        calls.append(None)
        raise KeyError("no such table")

    with pytest.raises(KeyError):
        await eventually(broken, within=5, interval=0.01)
    assert len(calls) == 1


def test_the_sdks_cancel_race_warning_does_not_stop_a_test_worker() -> None:
    """Warnings are errors in the suite, but not this one.

    The SDK's activity poller warns when a cancel reaches an activity that has just
    finished; raised as an error inside the poller it shut a test's worker down (seen
    once under load), which a production worker never does.
    """
    import warnings

    warnings.warn("Cannot find activity to cancel for token b'...'", UserWarning, stacklevel=1)
