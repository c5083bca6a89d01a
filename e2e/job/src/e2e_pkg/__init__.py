"""A local package of the e2e job's working_dir, installed editable by pixi."""
