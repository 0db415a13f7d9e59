"""Pre-training: the optimiser of a config, the train state and its pure step, the
method-agnostic loop, checkpoints, metrics and dashboards."""
