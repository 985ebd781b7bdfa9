"""The ``dae`` command."""
