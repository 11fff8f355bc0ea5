"""The idempotency key against its own job's completion: producers enqueue the same keys over
and over while `jobq worker` processes complete them as fast as they can, so enqueues keep
meeting completions of their own key in flight. Exactly one job per key, whatever the
interleaving; and the usual ledger for the jobs themselves."""

from __future__ import annotations

import random
import threading

from jobq_core import JobQueue, NewJob

from .harness import Run, WorkerSet, connect, worker_env
from .worker_app import WORK

KEYS = 200
ROUNDS = 6


def test_the_key_against_its_own_completion(rdsn: str, workers: WorkerSet) -> None:
    run = Run(f"{KEYS} keys enqueued {ROUNDS}x by 4 producers while workers complete them",
              rdsn, workers)
    workers.start(2, worker_env(rdsn, concurrency=8, lease_ms=3000))
    assert workers.wait_serving()
    keys = [f"key-{i}" for i in range(KEYS)]
    returned: dict[str, set[int]] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def producer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with JobQueue(rdsn, max_connections=2) as queue:
                for _ in range(ROUNDS):
                    order = rng.sample(keys, len(keys))
                    for start in range(0, len(order), 20):
                        chunk = order[start:start + 20]
                        if rng.random() < 0.5:
                            ids = queue.enqueue_many(
                                [NewJob(WORK, {"sleep_ms": 1}, idempotency_key=k) for k in chunk])
                        else:
                            ids = [queue.enqueue(WORK, {"sleep_ms": 1}, idempotency_key=k)
                                   for k in chunk]
                        with lock:
                            for key, job_id in zip(chunk, ids, strict=True):
                                returned.setdefault(key, set()).add(job_id)
        except BaseException as exc:
            errors.append(exc)

    producers = [threading.Thread(target=producer, args=(i,)) for i in range(4)]
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join(120)
    run.fault_over()
    run.expected = sorted({i for ids in returned.values() for i in ids})
    run.wait_drained(60)
    with connect(rdsn) as conn:
        made = dict(conn.execute(
            "SELECT idempotency_key, count(DISTINCT job_id) FROM svti_jobs_events "
            "WHERE event = 'enqueued' GROUP BY 1").fetchall())
    split = sorted(k for k, ids in returned.items() if len(ids) > 1)
    extra = sorted(k for k, n in made.items() if n > 1)
    run.note(f"{KEYS * ROUNDS * 4} enqueue calls for {KEYS} keys; {len(made)} jobs made; "
             f"keys answered with more than one id: {len(split)}; keys with more than one "
             f"job: {len(extra)}; errors: {len(errors)}")
    ledger = run.finish()
    ledger.check()
    assert errors == [], errors[:3]
    assert not split and not extra, ledger.render()
    assert len(made) == KEYS and ledger.enqueued == KEYS
    run.assert_stopped_cleanly()
