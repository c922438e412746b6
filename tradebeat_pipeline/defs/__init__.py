"""Dagster wiring only: assets, checks, schedules, sensors and resource bindings."""
