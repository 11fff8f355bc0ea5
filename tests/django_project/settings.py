"""Settings of the test project: the database is the one `JOBQ_DJANGO_DSN` names, which the
test creates; jobq's tables live in it too."""

import os

from psycopg.conninfo import conninfo_to_dict

DSN = os.environ["JOBQ_DJANGO_DSN"]
_params = conninfo_to_dict(DSN)

SECRET_KEY = "tests-only"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["tests.django_project.shop"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _params["dbname"],
        "USER": _params.get("user", ""),
        "PASSWORD": _params.get("password", ""),
        "HOST": _params.get("host", ""),
        "PORT": _params.get("port", ""),
    },
}
TASKS = {
    # jobq's tables in the app's database: enqueues join the caller's transaction.
    "default": {
        "BACKEND": "jobq_core.contrib.django.JobqBackend",
        "QUEUES": ["default", "mail"],
    },
    # Tasks that jobq retries once.
    "retrying": {
        "BACKEND": "jobq_core.contrib.django.JobqBackend",
        "QUEUES": ["retry"],
        "OPTIONS": {"MAX_ATTEMPTS": 2},
    },
    # As if they were elsewhere: enqueued once the transaction commits.
    "on_commit": {
        "BACKEND": "jobq_core.contrib.django.JobqBackend",
        "OPTIONS": {"DSN": DSN, "ENQUEUE": "on_commit"},
    },
}
