"""SLURM launcher on submitit: ``python -m launch.submit`` (one job) and ``python -m launch.pipeline`` (stages).

See ``launch/README.md``.
"""
