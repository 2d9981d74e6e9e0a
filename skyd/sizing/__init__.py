"""Sizing: what the hardware is, what a worker costs, how many requests run at once."""
