"""Trains one trial: tasks, models, optimizers, compression recipes, the trial loop (no MLflow
here)."""
