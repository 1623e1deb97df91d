"""Shared test set-up. Real services (PostgreSQL, mlflow server, Ray nodes) live in
tests/fixtures_services.py and are registered here."""

pytest_plugins = ["tests.fixtures_services"]
