"""The `ssh` infra: nodes are existing hosts from a node pool, reached with the system's
ssh and rsync (so ~/.ssh/config, agents and jump hosts just work).

Who logs in: on a per-user pool (the default) a node is reached under its cluster owner's
own login name with the owner's own ssh setup — every ssh and rsync runs *as the owner*:
in the worker (which already is the owner) and in the daemon (starting, watching,
cancelling jobs, reading logs, health checks, `skyctl infra` probes), where the ssh child
drops to the owner's uid, groups, HOME and clean environment and uses the owner's control
directory `<state>/ssh/<uid>`. Users of one pool then cannot read each other's files or
signal each other's jobs. A pool with `shared_login: true` is reached with its one login
and key, by the daemon as itself (control directory `<state>/ssh/daemon`): not isolated.

Connections are multiplexed (ControlMaster): one handshake per host serves every command
of a request. A node's files live under `~/.skyd/<cluster>/node-<rank>/` of the login
(0700): the workdir in `sky_workdir/`, each job in `jobs/<id>/` — its script, its
environment (0600, deleted by the runner as soon as it has read it: no secret stays in a
file once the job has started), its log and its exit status, written on the node by a
detached runner, so a job outlives the daemon and an ssh drop. Every command line puts
`--` before the destination; the pool file's fields are checked (skyd.infra.nodepools).

Modules: `connection` (ssh command lines, who runs them, running a command), `scripts`
(the shell run on a node), `provisioner` (worker side), `jobrunner` (daemon side: jobs
and node health), `joblog` (a job's output, tailed over ssh) and `masters` (ending the
multiplexing masters when the daemon stops, and those a killed daemon left).
"""

from skyd.infra.ssh.connection import SshClient, control_dir
from skyd.infra.ssh.jobrunner import SshRunner
from skyd.infra.ssh.provisioner import SshProvisioner
from skyd.infra.ssh.scripts import node_dir

__all__ = ["SshClient", "SshProvisioner", "SshRunner", "control_dir", "node_dir"]
