"""Training: the job config, the sharding plan and optimizers, checkpoints and the loop."""
