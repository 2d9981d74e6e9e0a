"""The `slurm` infra: clusters and managed jobs on a Slurm cluster a team already runs,
with Slurm doing allocation, placement, GPUs (GRES), fair share and multi-node launch.

A cluster is one allocation — a batch job named `skyd-CLUSTER` that holds `num_nodes`
nodes while the cluster lives — submitted by the worker, which already runs as the
cluster's owner: their own Slurm account and fair share, never a service account's.
Setup and every job run inside it as `srun --overlap` steps on all its nodes, with
SkyPilot's node variables derived from Slurm's. The cluster's files (workdir, jobs) are
in the owner's home, which Slurm's nodes share with the host Slurm's commands run on:
this one (the daemon's host is a login node), or a login node reached over ssh as the
owner (`slurm.login`: their login name and ssh setup), as the user for everything in
their space.

Modules: `settings` (the daemon's `slurm:` section), `places` (where Slurm's commands
run and the cluster's files are: here, or a login node over ssh), `commands` (running
Slurm's commands, their failures as clear errors), `allocation` (an allocation as squeue shows
it), `addresses` (the nodes' addresses, asked for while an allocation starts), `scripts`
(the shell around steps), `provisioner` (worker side: allocation, files,
setup, jobs' files, down), `jobrunner` (daemon side: a job's srun client as a local
runner) and `watcher` (one squeue for all allocations).
"""

from skyd.infra.slurm.jobrunner import SlurmRunner
from skyd.infra.slurm.provisioner import SlurmProvisioner
from skyd.infra.slurm.settings import SettingsError, SlurmSettings, parse as parse_settings

__all__ = ["SettingsError", "SlurmProvisioner", "SlurmRunner", "SlurmSettings", "parse_settings"]
