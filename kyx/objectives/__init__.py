"""Pure losses: arrays in, (loss, metrics) out."""
