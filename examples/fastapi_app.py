"""FastAPI and jobq: a request enqueues a job, then waits for its result.

    pip install jobq fastapi uvicorn
    export JOBQ_DSN=postgresql://app@localhost/app
    jobq worker examples.fastapi_app:runner &
    uvicorn --factory examples.fastapi_app:create_app

    curl -X POST localhost:8000/thumbnails -H 'content-type: application/json' \\
         -d '{"url": "https://example.com/cat.png", "width": 128}'

The app waits up to `WAIT` seconds on one LISTEN connection per process (`AsyncJobQueue.wait`);
a job still running by then is answered 202 with its id, to look up at /jobs/{id}. The
request's X-Request-ID becomes the job's request id (`jobq trace` follows it).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from jobq_core import (
    AsyncJobQueue,
    Context,
    JobFailedError,
    JobQueue,
    NotFoundError,
    TaskRunner,
    WaitTimeoutError,
    create_task_runner,
)

#: Seconds a request waits for its job before answering 202.
WAIT = 10.0


class Thumbnail(BaseModel):
    url: str
    width: int


def create_app(dsn: str | None = None) -> FastAPI:
    queue = AsyncJobQueue(dsn or os.environ["JOBQ_DSN"])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await queue.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/thumbnails")
    async def thumbnail(body: Thumbnail, request: Request) -> Any:
        job_id = await queue.enqueue("thumbnail", body.model_dump(),
                                     request_id=request.headers.get("x-request-id"))
        try:
            result = await queue.wait(job_id, timeout=WAIT)
        except WaitTimeoutError:
            return JSONResponse({"job_id": job_id, "status": "running"}, status_code=202)
        except JobFailedError as exc:
            # The reason's first line ("ValueError: ..."); the traceback stays in jobq.
            first = (exc.reason or "failed").partition("\n")[0]
            raise HTTPException(status_code=422, detail=f"job {job_id}: {first}") from None
        return {"job_id": job_id, "result": result}

    @app.get("/jobs/{job_id}")
    async def job(job_id: int) -> Any:
        try:
            done = await queue.outcome(job_id)
        except NotFoundError:
            raise HTTPException(status_code=404, detail=f"no job {job_id}") from None
        return {"job_id": job_id, "state": done.state, "result": done.result,
                "error": done.error}

    return app


def make_thumbnail(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Stands in for real work."""
    if payload["width"] <= 0:
        raise ValueError(f"width must be positive, got {payload['width']}")
    return {"url": payload["url"], "width": payload["width"], "request_id": ctx.request_id}


def runner(dsn: str | None = None) -> TaskRunner:
    """The worker: `jobq worker examples.fastapi_app:runner`."""
    worker = create_task_runner(JobQueue(dsn or os.environ["JOBQ_DSN"]))
    worker.register("thumbnail", make_thumbnail, max_attempts=1)
    return worker
