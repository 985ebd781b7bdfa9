"""One module per ``dae`` subcommand, each holding its ``COMMAND`` (dae_cli/command.py)."""
