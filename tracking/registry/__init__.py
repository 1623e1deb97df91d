"""The MLflow Model Registry: a trial's model logged as the whole pipeline, one promotion at a time
(the lock), promote and rollback."""
