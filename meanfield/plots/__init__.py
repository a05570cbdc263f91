"""Figures: the plotting functions (``figures``) and the background worker that draws while a run
computes (``_worker``, started as ``python -m meanfield.plots._worker``)."""
