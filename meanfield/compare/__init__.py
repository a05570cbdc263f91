"""Real models against the flow: the replay of a dump (``replay``), the replay with a model's own
weights (``own_weights``) and the ``meanfield-compare`` tool (``cli``; ``python -m meanfield.compare``)."""
