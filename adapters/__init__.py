"""The project's side of the services it uses, one idea per module: where tracking lives
(``mlflow_store``), a run's life (``mlflow_runs``), runs found again (``run_search``), links
into the UI (``mlflow_links``), the registered model (``model_registry``) and its champion
(``champion``), the studies of ``dae tune`` (``studies``), the model server (``serving_app``),
the tag names (``tags``), progress to a caller in the same process (``progress``). Neither
science (``dae_core``) nor Prefect tasks (``tasks``); docs/architecture.md draws them."""
