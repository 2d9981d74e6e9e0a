"""skyctl, the thin client of skyd. Its cold start is part of the product (README)."""

import sys

# msgspec imports typing_extensions when it is installed (aiohttp, a dependency of the
# daemon's HTTP side, brings it) only to backport what Python 3.11's typing has; that
# import (inspect, ast, dis, tokenize) costs ~10 ms of every skyctl start. Hide it while
# msgspec loads; anything imported later still finds it.
if "msgspec" not in sys.modules and "typing_extensions" not in sys.modules:
    sys.modules["typing_extensions"] = None  # type: ignore[assignment]
    try:
        import msgspec  # noqa: F401
    finally:
        if sys.modules.get("typing_extensions", 0) is None:
            del sys.modules["typing_extensions"]
