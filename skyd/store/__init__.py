"""The store: all SQL (aiosqlite, WAL, group commit, migrations)."""

from skyd.store.sqlite import *  # noqa: F401,F403
from skyd.store.sqlite import MIGRATIONS, Store  # noqa: F401
