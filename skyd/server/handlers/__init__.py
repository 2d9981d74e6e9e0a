"""Handlers of short and inline requests: coroutines in the daemon's loop, each registered
once in skyd.server.dispatch. Importing this package registers them all."""

from skyd.server.handlers import api, clusters, gpus, managed, tokens, watch  # noqa: F401 - they register
