"""The test project's tasks: a return value, the database from a worker, a failure and the
task context."""

from typing import Any

try:  # Django 6
    from django.tasks import task
except ImportError:  # Django 5.2 and the backport
    from django_tasks import task

from .models import Order


class OutOfStockError(Exception):
    pass


@task
def add(a: int, b: int) -> int:
    return a + b


@task(queue_name="mail")
def count_orders(item: str) -> dict[str, Any]:
    return {"item": item, "orders": Order.objects.filter(item=item).count()}


@task
def out_of_stock(item: str) -> None:
    raise OutOfStockError(f"no {item} left")


@task(takes_context=True)
def attempt(context: Any) -> dict[str, Any]:
    return {"attempt": context.attempt, "id": context.task_result.id}


@task(takes_context=True, backend="retrying", queue_name="retry")
def flaky(context: Any) -> dict[str, Any]:
    """Fails its first attempt; the second reports what its context says of the first."""
    if context.attempt == 1:
        raise ConnectionError("the shipping service is down")
    seen = context.task_result
    return {"attempt": context.attempt, "status": seen.status,
            "errors": [e.exception_class_path for e in seen.errors]}
