"""Requests: the two queues, fair slots, recovery, and the worker processes that run long ones."""
