"""Talks to MLflow: the store and its buffered writer, pure selection, the registry, serving,
reports."""
