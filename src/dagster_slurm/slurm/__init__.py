"""Slurm layer: pure job-script rendering, output parsing, and one batched job watcher per process."""
