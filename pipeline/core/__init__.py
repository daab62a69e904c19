"""Shared foundations every stage may use: atomic file writes, the rank AUC, process groups."""
