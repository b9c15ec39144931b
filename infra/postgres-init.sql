-- MLflow uses the database named in POSTGRES_DB (mlflow); Prefect gets its own, and so do search studies (Optuna's
-- alembic table would collide with MLflow's).
CREATE DATABASE prefect OWNER loraops;
CREATE DATABASE optuna OWNER loraops;
