"""Prefect tasks: thin adapters that run one dae_core stage each and report it to
MLflow and the Prefect UI. Tasks exchange file paths and small dicts, never tensors."""
