"""The project's side of the services it uses: the MLflow tracking store (``tracking``), the
tag names it writes there (``tags``), and per-epoch progress to a caller in the same
process (``progress``). Neither science (``dae_core``) nor Prefect tasks (``tasks``)."""
