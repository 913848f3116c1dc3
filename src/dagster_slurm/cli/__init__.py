"""Command line: ``dagster-slurm deploy`` and ``dagster-slurm env list|gc``."""
