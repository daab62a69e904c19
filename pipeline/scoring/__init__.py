"""Inference from a checkpoint: the model for this world size, offline scoring, evaluating a checkpoint."""
