"""Flower ServerApp, aggregation strategy and server-side checkpoints."""
