"""Analysis of finished runs, from their result files only (or their W&B mirror):

- :mod:`analysis.collect` -- run folders -> one DataFrame (the input of everything else);
- :mod:`analysis.wandb_runs` -- W&B runs (server or offline files) -> the same DataFrame;
- :mod:`analysis.compare` -- comparison tables (``python -m analysis.compare SWEEP_DIR``);
- :mod:`analysis.tables` -- rendering them as Markdown, CSV and LaTeX, best values marked;
- :mod:`analysis.plots` -- the figures (matplotlib);
- :mod:`analysis.report` -- a sweep's report.md with its table and figures (``python -m analysis.report SWEEP_DIR``).
"""
