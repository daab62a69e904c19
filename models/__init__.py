"""The DLRM-style ranker and its arches."""
