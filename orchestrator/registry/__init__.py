"""After a sweep: the leaderboard, promotion of the winner to the MLflow Model Registry, registry
teachers, serving replicas, and a finished sweep read back from MLflow."""
