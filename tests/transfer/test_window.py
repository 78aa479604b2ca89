"""The in-flight window opens while more requests in flight raise the rate, and no further: checked
on simulated links (a clock of the test's own: no timing decides these)."""

import pytest

from dlm.transfer import window as module
from dlm.transfer.window import Window

MiB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def settle(window: Window, clock: Clock, rate: object) -> list[int]:
    """Run rounds of requests of 1 MiB, as many at once as the window allows, all finishing together
    after what ``rate(in_flight)`` (bytes a second in all) says; the window's size after each."""
    sizes = []
    for _ in range(40):
        in_flight = window.size
        for _ in range(in_flight):
            await window.acquire()
        clock.now += in_flight * MiB / rate(in_flight)  # type: ignore[operator]
        for _ in range(in_flight):
            window.release(MiB)
        sizes.append(window.size)
    return sizes


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(module.time, "monotonic", clock)
    return clock


async def test_a_long_fat_link_opens_the_window_until_it_is_full(clock: Clock) -> None:
    # A round trip of 100 ms per request and a link of 40 MiB/s: four in flight fill it.
    def rate(in_flight: int) -> float:
        return min(in_flight * MiB / 0.1, 40 * MiB)

    window = Window(32)
    sizes = await settle(window, clock, rate)
    assert sizes[-1] == 4 and window.largest == 5, sizes  # it tried a fifth, which did not help


async def test_a_link_without_latency_keeps_one_in_flight(clock: Clock) -> None:
    window = Window(32)
    sizes = await settle(window, clock, lambda in_flight: 100 * MiB)
    assert sizes[-1] == 1 and window.largest == 2, sizes


async def test_the_window_never_opens_past_what_the_caller_may_spend(clock: Clock) -> None:
    window = Window(3)
    sizes = await settle(window, clock, lambda in_flight: in_flight * MiB / 0.1)
    assert max(sizes) == 3 and sizes[-1] == 3 and window.largest == 3, sizes


async def test_a_failed_request_gives_its_place_back(clock: Clock) -> None:
    window = Window(1)
    await window.acquire()
    window.release(0)
    await window.acquire()  # would wait for ever had the failure kept its place
    window.release(MiB)
