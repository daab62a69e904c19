"""Dataset preparation: raw data (MovieLens, synthetic) -> the Parquet of the data contract, and the sampled
ranking sets. numpy / pyarrow / pandas only: this stage never imports torch."""
