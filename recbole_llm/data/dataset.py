"""Plugin datasets. ``<Model>Dataset`` classes here are picked by name (see utils.create_dataset)."""
