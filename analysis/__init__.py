"""Analysis of finished runs, from their result files only: :mod:`analysis.collect` (run folders -> DataFrame)
and :mod:`analysis.compare` (comparison tables; ``python -m analysis.compare SWEEP_DIR``)."""
