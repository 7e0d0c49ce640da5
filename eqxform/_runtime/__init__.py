"""What runs at the jit/grad boundary and in training: wrappers and `resolve`,
the optimiser built from a spec, and the low-overhead training step."""
