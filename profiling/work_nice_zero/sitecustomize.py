"""bench_acceptance's comparison variant only: with this folder on PYTHONPATH every Python
process of the daemon (the daemon, its forkserver and so its workers) runs work at nice 0,
the same as the daemon's loop, as before skyd.privilege.WORK_NICE existed. Never on the
path of a real daemon."""

import skyd.privilege

skyd.privilege.WORK_NICE = 0
