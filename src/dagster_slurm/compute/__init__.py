"""Compute layer: the ComputeResource facade, with a local mode and a Slurm mode."""
