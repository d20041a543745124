-- One PostgreSQL server, three databases: conveyor's metadata, MLflow's tracking store and registry, Airflow's own.
CREATE USER conveyor PASSWORD 'conveyor';
CREATE DATABASE conveyor OWNER conveyor;
CREATE USER mlflow PASSWORD 'mlflow';
CREATE DATABASE mlflow OWNER mlflow;
CREATE USER airflow PASSWORD 'airflow';
CREATE DATABASE airflow OWNER airflow;
