"""What runs on top of a compiled spec: the optimiser it describes, the
low-overhead training step and the training loop."""
