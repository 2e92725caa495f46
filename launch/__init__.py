"""SLURM launcher (submitit)."""
