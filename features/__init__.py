"""Feature specs: the YAML that declares tables and features, its loading and its validation."""
