"""The store: all SQL (aiosqlite, WAL, group commit, migrations).

One database (sqlite.py) under one writer, its schema as migrations (schema.py), and the
rows of each table group written and read by its own class: requests (requests.py),
clusters and their jobs (clusters.py), managed jobs (managed.py), hosts' detected GPUs
(hosts.py), submissions' idempotency keys (submissions.py). `Store` is all of them
on the same connections.
"""

from skyd.store.clusters import ClusterRows
from skyd.store.hosts import HostRow, HostRows
from skyd.store.managed import ManagedJobRows
from skyd.store.requests import RequestRows, StoredRequest
from skyd.store.schema import MIGRATIONS
from skyd.store.submissions import SubmissionRows


class Store(RequestRows, ClusterRows, ManagedJobRows, HostRows, SubmissionRows):
    """The daemon's one store: every table's rows, one writer, one group commit."""


__all__ = ["MIGRATIONS", "HostRow", "Store", "StoredRequest"]
