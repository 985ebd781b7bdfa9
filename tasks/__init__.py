"""Prefect tasks: thin wrappers that run one dae_core stage each and report it to MLflow
(through ``adapters.tracking``) and the Prefect UI. Tasks exchange file paths and small
dicts, never tensors."""
