"""Pipes layer: Dagster Pipes over SSH. Context goes into the job; messages and logs come back."""
