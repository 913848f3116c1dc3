"""Slurm layer: pure job-script rendering, output parsing, and one batched job watcher per transport
(the connection agent's: one per machine), the exit-file loop."""
