"""The circuit breaker that keeps lookups from waiting on a failing S3, on a clock of our own."""

from regcache.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_failure_keeps_the_peer_skipped_for_a_backoff_that_doubles_up_to_the_cap():
    clock = Clock()
    breaker = CircuitBreaker(first=2.0, most=5.0, clock=clock)
    assert breaker.available
    assert [breaker.failed() for _ in range(4)] == [2.0, 4.0, 5.0, 5.0]
    assert not breaker.available and breaker.retry_in() == 5.0
    clock.now += 5.0
    assert breaker.available


def test_a_success_closes_it_and_starts_the_backoff_over():
    clock = Clock()
    breaker = CircuitBreaker(first=2.0, most=60.0, clock=clock)
    assert breaker.succeeded() is False  # nothing to recover from: no log line
    breaker.failed()
    breaker.failed()
    clock.now += 10
    assert breaker.succeeded() is True
    assert breaker.failed() == 2.0
