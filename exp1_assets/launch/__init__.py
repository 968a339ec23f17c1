"""Plain-Python job launching: `accelerate launch` arguments, the local and Slurm backends, the
follow loop and the failure analysis, with this package's own error types (`errors.py`).

Dagster never appears here: `exp1_assets.defs.launcher` wraps these pieces in a resource and turns
`errors.LaunchError` into `dagster.Failure` in one place.
"""
