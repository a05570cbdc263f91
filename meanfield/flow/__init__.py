"""The driver and its loop: ``solve_flow`` and the run specification (``driver``), its option
objects (``options``, ``checkpoint``, ``progress``), the public step and the particle runners
(``particles``), merged runs (``merged``), the density methods (``density``), initial laws
(``distributions``), the result (``solution``), and what a run will cost (``resources``, ``eta``)."""
