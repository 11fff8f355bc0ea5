"""The FastAPI example (examples/fastapi_app.py) on real Postgres, with a runner working in
this process: a request enqueues and gets its job's result, or its error."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient

from examples import fastapi_app


@pytest.fixture
def client(dsn: str) -> Iterator[TestClient]:
    worker = fastapi_app.runner(dsn)
    thread = threading.Thread(target=asyncio.run, args=(worker.serve(),))
    thread.start()
    try:
        with TestClient(fastapi_app.create_app(dsn)) as client:
            yield client
    finally:
        worker.request_stop()
        thread.join(30)
        worker.queue.close()


def test_a_request_enqueues_and_waits_for_the_result(client: TestClient) -> None:
    answer = client.post("/thumbnails", json={"url": "cat.png", "width": 128},
                         headers={"X-Request-ID": "req-42"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["result"] == {"url": "cat.png", "width": 128, "request_id": "req-42"}
    job = client.get(f"/jobs/{body['job_id']}").json()
    assert (job["state"], job["result"]["width"]) == ("completed", 128)


def test_a_failed_job_is_answered_with_its_error(client: TestClient) -> None:
    answer = client.post("/thumbnails", json={"url": "cat.png", "width": 0})
    assert answer.status_code == 422
    assert "ValueError: width must be positive, got 0" in answer.json()["detail"]
    assert client.get("/jobs/999999").status_code == 404


def test_a_job_not_done_in_time_is_answered_202(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fastapi_app, "WAIT", 0.2)
    with TestClient(fastapi_app.create_app(dsn)) as client:  # and no worker
        answer = client.post("/thumbnails", json={"url": "cat.png", "width": 1})
        assert answer.status_code == 202
        job = client.get(f"/jobs/{answer.json()['job_id']}").json()
        assert (job["state"], job["result"]) == ("pending", None)
