"""The reliability suite: crash consistency, orphans, fuzzing, resource faults (RELIABILITY.md)."""
