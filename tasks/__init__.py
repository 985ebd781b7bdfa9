"""Prefect tasks: thin wrappers that run one dae_core stage or one step each and record it
in MLflow (through the adapters: ``mlflow_runs``, ``model_registry``, ``champion``) and the
Prefect UI. Tasks exchange file paths and small typed values, never tensors."""
