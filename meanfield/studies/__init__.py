"""Studies built on the driver's engines: phase diagrams (``phase``), vmapped batches (``batch``),
ensembles over redrawn weights (``ensembles``), batch- and token-sharded advances (``sharding``),
float32-against-float64 studies (``precision``) and the token-merging study (``merge_study``)."""
