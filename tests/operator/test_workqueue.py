"""The work queue: timers in one heap, a bounded pool of workers, rollbacks first, one run per key at a time."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Hashable, Iterator

import pytest
from rollout_operator.workqueue import Outcome, Priority, WorkQueue


class Recorder:
    """A `process` that records the order of runs and can hold a run until released."""

    def __init__(self, outcome: Callable[[Hashable], Outcome] = lambda key: Outcome(None)) -> None:
        self.runs: list[Hashable] = []
        self.running: set[Hashable] = set()
        self.overlaps: list[Hashable] = []
        self.gate = threading.Event()
        self.gate.set()
        self.outcome = outcome
        self._lock = threading.Lock()

    def __call__(self, key: Hashable) -> Outcome:
        with self._lock:
            if key in self.running:
                self.overlaps.append(key)
            self.running.add(key)
            self.runs.append(key)
        self.gate.wait(5)
        with self._lock:
            self.running.discard(key)
        return self.outcome(key)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def queue_of() -> Iterator[Callable[..., WorkQueue]]:
    queues: list[WorkQueue] = []

    def make(process: Callable[[Hashable], Outcome], **kwargs: object) -> WorkQueue:
        queue = WorkQueue(process, **kwargs)  # type: ignore[arg-type]
        queues.append(queue)
        return queue

    yield make
    for queue in queues:
        queue.stop(timeout=2)


def test_rollbacks_run_before_routine_work_queued_earlier(
    recorder: Recorder, queue_of: Callable[..., WorkQueue]
) -> None:
    queue = queue_of(recorder, workers=1)
    for i in range(50):
        queue.add(f"routine-{i}", Priority.ROUTINE)
    queue.add("guarded", Priority.ANALYSIS)
    queue.add("breached", Priority.ROLLBACK)
    queue.start()
    wait_until(lambda: len(recorder.runs) == 52)
    assert recorder.runs[:2] == ["breached", "guarded"]
    assert recorder.runs[2:] == [f"routine-{i}" for i in range(50)], "same priority: first due, first served"


def test_a_timer_fires_at_its_deadline_and_the_earliest_deadline_wins(
    recorder: Recorder, queue_of: Callable[..., WorkQueue]
) -> None:
    queue = queue_of(recorder, workers=2).start()
    started = time.monotonic()
    queue.schedule("r", 0.5)
    queue.schedule("r", 0.2)  # sooner: replaces
    queue.schedule("r", 0.4)  # later than the live timer: ignored
    wait_until(lambda: recorder.runs == ["r"])
    assert 0.15 <= time.monotonic() - started < 0.45
    time.sleep(0.5)
    assert recorder.runs == ["r"], "one timer, one run"


def test_a_key_never_runs_twice_at_once_and_a_change_meanwhile_runs_it_again(
    recorder: Recorder, queue_of: Callable[..., WorkQueue]
) -> None:
    queue = queue_of(recorder, workers=4).start()
    recorder.gate.clear()
    queue.add("r")
    wait_until(lambda: "r" in recorder.running)
    for _ in range(10):  # ten changes while it runs
        queue.add("r")
    time.sleep(0.1)
    assert recorder.runs == ["r"], "not started again while running, on another worker"
    recorder.gate.set()
    wait_until(lambda: len(recorder.runs) == 2)
    time.sleep(0.1)
    assert recorder.runs == ["r", "r"], "the ten changes collapse into one more run"
    assert recorder.overlaps == []


def test_requeue_after_sets_the_next_timer_and_none_leaves_the_key_idle(queue_of: Callable[..., WorkQueue]) -> None:
    recorder = Recorder(lambda key: Outcome(0.05) if key == "progressing" else Outcome(None))
    queue = queue_of(recorder, workers=1).start()
    queue.add("progressing")
    queue.add("finished")
    wait_until(lambda: recorder.runs.count("progressing") >= 4)
    assert recorder.runs.count("finished") == 1
    assert queue.pending("finished") is None
    assert queue.pending("progressing") is not None


def test_forget_drops_timers_and_queued_runs(recorder: Recorder, queue_of: Callable[..., WorkQueue]) -> None:
    queue = queue_of(recorder, workers=1)
    queue.add("deleted")
    queue.schedule("deleted-later", 0.05)
    queue.forget("deleted")
    queue.forget("deleted-later")
    queue.add("kept")
    queue.start()
    wait_until(lambda: recorder.runs == ["kept"])
    time.sleep(0.15)
    assert recorder.runs == ["kept"]
    assert queue.snapshot() == ({p: 0 for p in Priority}, 0, 0)


def test_a_failing_reconcile_is_retried_with_growing_backoff_and_the_worker_survives(
    queue_of: Callable[..., WorkQueue],
) -> None:
    times: list[float] = []

    def flaky(key: Hashable) -> Outcome:
        times.append(time.monotonic())
        if len(times) < 4:
            raise RuntimeError("API unreachable")
        return Outcome(None)

    queue = queue_of(flaky, workers=1, retry_after=0.05, max_backoff=1.0).start()
    queue.add("r")
    wait_until(lambda: len(times) == 4)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.04 and gaps[1] >= 0.09 and gaps[2] >= 0.19, f"backoff doubles: {gaps}"


def test_a_thousand_due_at_once_are_bounded_by_the_pool(queue_of: Callable[..., WorkQueue]) -> None:
    active, peak = 0, 0
    lock = threading.Lock()
    done = threading.Semaphore(0)

    def work(key: Hashable) -> Outcome:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.001)
        with lock:
            active -= 1
        done.release()
        return Outcome(None)

    queue = queue_of(work, workers=4).start()
    for i in range(1000):
        queue.schedule(i, 0.0)
    for _ in range(1000):
        assert done.acquire(timeout=10)
    assert peak <= 4


def test_waits_and_outcomes_are_reported(queue_of: Callable[..., WorkQueue]) -> None:
    waited: list[tuple[Priority, float]] = []
    finished: list[str] = []

    class Seen:
        def waited(self, priority: Priority, seconds: float) -> None:
            waited.append((priority, seconds))

        def finished(self, result: str, seconds: float) -> None:
            finished.append(result)

    queue = queue_of(lambda key: Outcome(None, result="skipped"), workers=1, observer=Seen())
    queue.add("r", Priority.ROLLBACK)
    time.sleep(0.1)
    queue.start()
    wait_until(lambda: finished == ["skipped"])
    [(priority, seconds)] = waited
    assert priority is Priority.ROLLBACK and seconds >= 0.09, "the wait counts from when it was due"


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        WorkQueue(lambda key: Outcome(None), workers=0)
