"""Managed jobs: persisted state machines driven by the daemon's loop."""
