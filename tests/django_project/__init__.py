"""A minimal Django project for tests/test_django.py: one app, one model, a few tasks."""
