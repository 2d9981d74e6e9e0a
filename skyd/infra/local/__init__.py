"""The `local` infra: a cluster is a set of sandbox nodes on the daemon's own host.

`provisioner` (worker side) makes the nodes — directories owned by the cluster's owner —
and puts each job's script and environment there; `jobrunner` (daemon side) starts a
job as a detached runner whose output and exit status go to the daemon's own control
files, and watches it through a pidfd; `devicefence` keeps it to its GPUs where the host
has a devices cgroup; `scopes` starts it in a systemd scope of its own where systemd
runs the host; `processes` tells whether runners live and how a job ended, and signals
them.
"""

from skyd.infra.local.jobrunner import LocalRunner, control_dir, control_root
from skyd.infra.local.processes import mark_cancelled
from skyd.infra.local.provisioner import LocalProvisioner, cluster_dir, prepare_cluster_dir

__all__ = ["LocalProvisioner", "LocalRunner", "cluster_dir", "control_dir", "control_root",
           "mark_cancelled", "prepare_cluster_dir"]
