"""Reading and batching: Parquet row groups -> ``Pipelineable`` batches of KeyedJaggedTensors."""
