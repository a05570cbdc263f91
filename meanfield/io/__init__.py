"""Files: results files (``results``: ``save_results``/``load_results``), the HDF5 helpers they
share with dumps and checkpoints (``hdf5``), atomic writes (``atomic``) and the compilation cache
(``compile_cache``). Nothing here imports JAX at module level: reading a file needs none."""
