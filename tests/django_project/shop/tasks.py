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
