-- MLflow uses the database named in POSTGRES_DB (mlflow); Prefect gets its own.
CREATE DATABASE prefect OWNER loraops;
