"""The pipeline, by stage; each stage imports only the stages before it (``tests/test_layout.py``):

``core`` (atomic writes, AUC, process groups) -> ``prepare`` (datasets, no torch) -> ``reading`` (Parquet ->
batches) -> ``evaluation`` (prediction, metrics) -> ``training`` (config, sharding, checkpoints, loop) ->
``scoring`` (inference from a checkpoint) -> ``cli``.
"""
