"""Evaluation: predictions over a reader on every rank, AUC / NE / log loss / calibration, HR@k / NDCG@k."""
