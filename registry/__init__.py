"""registry: adapter versions and artifacts (MLflow model registry + S3/local stores)."""
