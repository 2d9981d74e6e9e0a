"""Clusters: the registry, per-cluster job queues, host allocation, autostop, and the long cluster requests."""
