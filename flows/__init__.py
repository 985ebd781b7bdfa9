"""Prefect flows: they only compose tasks (fetch -> pretrain -> surgery -> classify ->
evaluate -> report)."""
