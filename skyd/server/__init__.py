"""The server: lifecycle, listeners, sessions, the dispatch table and the handlers of short requests."""
