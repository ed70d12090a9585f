"""Training: network, loss, data loading, trainer."""
