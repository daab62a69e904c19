"""Data preparation and reading, training, evaluation and the ``crossrank`` CLI."""
