"""README's "Coming from SkyPilot" table, row by row: each SkyPilot form runs through the
real skyctl against one daemon, the skyd form it maps to against another that has seen
the same commands, and both must leave the same state and print the same output."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest

from conftest import ROOT, Daemon, kill_leftovers, wait_until
from skyctl.connection import ServerError
from skyd import protocol

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
AGES = re.compile(r"\b\d+(h\d\dm|m\d\ds|[smhd])( ago)?(?= |$)", re.M)    # "5s ago", "1m02s"
TIMES = ("submitted_at", "started_at", "ended_at", "launched_at", "last_use", "created_at",
         "finished_at", "run_started_at", "request_id", "submit_request", "id", "path")


class Form(NamedTuple):
    readme: str          # the `sky` form as README's table writes it
    setup: str           # commands run first on both daemons (";"-separated)
    sky: str             # what a SkyPilot user types (minus "sky")
    skyd: str            # skyctl's own form of the same
    view: str            # what must be equal: out (rc, stdout), state (clusters, jobs)


T = "{task}"
FORMS = [
    Form("sky launch -c dev task.yaml", "", f"launch -c l1 {T}", f"launch {T} --cluster l1", "out"),
    Form("sky launch -c dev echo hi", "", "launch -c l2 echo hi there",
         "launch -c l2 'echo hi there'", "out"),
    Form("sky launch -c dev -i 30 --down -y task.yaml", "", f"launch -c l3 -i 30 --down -y {T}",
         f"launch {T} --cluster l3 --idle-minutes-to-autostop 30 --down --yes", "state"),
    Form("sky launch --env A=1 --env-file .env --secret K task.yaml", "",
         "launch -c l4 --env A=1 --env-file {env} --secret K=s -- 'echo $A $B $K'",
         "launch -c l4 'echo $A $B $K' --env A=1 --env B=2 --secret K=s", "out"),
    # The same overrides on local infra (no ssh pool here), against a YAML that says them.
    Form("sky launch --num-nodes 2 --cpus 4+ --memory 8+ --infra ssh/pool task.yaml", "",
         f"launch -c l5 --num-nodes 2 --cpus 0.1+ --memory 0.1+ --infra local {T}",
         "launch -c l5 {big}", "state"),
    Form("sky exec dev task.yaml", "launch -c e1 -d true", f"exec e1 {T}", f"exec -c e1 {T}", "out"),
    Form("sky exec dev -d echo hi", "launch -c e2 -d true", "exec e2 -d echo hi",
         "exec --cluster e2 --detach-run 'echo hi'", "state"),
    Form("sky status [dev] [-u]", "", "status l1", "status l1", "out"),
    Form("sky queue [dev...] [-s] [-u]", "", "queue e1 'l*' -s", "queue e1 l1 l2 l3 l4 l5 -s", "out"),
    Form("sky logs dev [1]", "", "logs e1 1", "logs e1 1", "out"),
    Form("sky logs --status dev 1", "", "logs --status e1 1", "logs e1 1 --status", "out"),
    Form("sky logs --tail 20 --no-follow dev 1", "exec e1 'seq 1 30'",
         "logs --tail 20 --no-follow e1 3", "logs e1 3 --no-follow --tail 20", "out"),
    Form("sky logs -s dev 1 2", "", "logs -s e1 1 2", "logs e1 1 2 --sync-down", "out"),
    Form("sky cancel dev 1 2", "exec e2 -d 'sleep 60'; exec e2 -d 'sleep 60'",
         "cancel e2 3 4 -y", "cancel e2 3 4", "state"),
    Form("sky cancel dev -a", "exec e2 -d 'sleep 60'", "cancel e2 -a -y", "cancel e2 5", "state"),
    Form("sky cancel dev", "exec e2 -d 'sleep 60'", "cancel e2 -y", "cancel e2 6", "state"),
    Form("sky stop dev", "", "stop e2 -y", "stop e2", "state"),
    Form("sky start -a", "", "start -a -y", "start {all}", "state"),
    Form("sky down 'dev-*' -y", "launch -c dev-1 -d true; launch -c dev-2 -d true",
         "down 'dev-*' -y", "down dev-1 dev-2", "state"),
    Form("sky autostop dev -i 30 [--down]", "", "autostop l1 -i 30 --down -y",
         "autostop l1 --idle-minutes 30 --down", "state"),
    Form("sky autostop -a --cancel", "", "autostop -a --cancel", "autostop {all} --cancel", "state"),
    Form("sky check [ssh]", "", "check", "infra", "out"),
    Form("sky jobs launch -n train task.yaml", "", f"jobs launch -n train -y {T}",
         f"jobs launch {T} --name train", "out"),
    Form("sky jobs queue [-u] [-s]", "", "jobs queue -u -s", "jobs queue --skip-finished -u", "out"),
    Form("sky jobs logs [1] [--controller] [--no-follow]", "", "jobs logs 1 --no-follow",
         "jobs logs 1 --no-follow", "out"),
    Form("sky jobs logs -n NAME", "", "jobs logs -n train", "jobs logs 1", "out"),
    Form("sky jobs cancel 1", "jobs launch -d 'sleep 60'", "jobs cancel 2 -y", "jobs cancel 2", "state"),
    Form("sky jobs cancel -n NAME", "jobs launch -d -n nap 'sleep 60'", "jobs cancel -n nap -y",
         "jobs cancel 3", "state"),
    Form("sky jobs cancel -a", "jobs launch -d 'sleep 60'", "jobs cancel -a -y", "jobs cancel 4",
         "state"),
    Form("sky api status [-a] [ID]", "", "api status -a -l 3", "api status --all --limit 3", "state"),
    Form("sky api logs ID", "", "api logs {request}", "api logs {request}", "out"),
    Form("sky api cancel ID", "launch -c slow --async {slow}", "api cancel {request} -y",
         "api cancel {request}", "state"),
    Form("sky api info", "", "api info", "api info", "state"),
    Form("sky show-gpus", "", "show-gpus", "gpus", "out"),
]

# README rows with no skyctl form to run (not in skyd).
NOT_IN_SKYD = {"sky cost-report", "sky serve ...", "sky storage ...", "sky ssh",
               "sky volumes ..."}


@pytest.fixture(scope="module")
def pair():
    """Two daemons: A hears the SkyPilot forms, B the skyd forms."""
    tmp = Path(tempfile.mkdtemp(prefix="skyd-p-", dir="/tmp"))
    (tmp / "t.yaml").write_text("setup: echo set-up\nrun: echo ran $SKYPILOT_NUM_NODES\n")
    (tmp / "big.yaml").write_text("num_nodes: 2\nresources: {cpus: 0.1+, memory: 0.1+, infra: local}\n"
                                  "setup: echo set-up\nrun: echo ran $SKYPILOT_NUM_NODES\n")
    (tmp / "slow.yaml").write_text("setup: sleep 60\nrun: echo never\n")
    (tmp / ".env").write_text("# comment\nexport B=2\n")
    home = os.environ.get("HOME")
    os.environ["HOME"] = str(tmp)             # logs --sync-down writes under ~/sky_logs
    daemons = [Daemon(tmp / name, ["--skip-resources-check", "--drain-timeout", "2"]).start()
               for name in ("a", "b")]
    try:
        yield tmp, daemons
    finally:
        if home is not None:
            os.environ["HOME"] = home
        for d in daemons:
            d.stop(signal.SIGTERM)
        kill_leftovers(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _words(d: Daemon, tmp: Path, line: str) -> list[str]:
    names = " ".join(sorted(c.name for c in d.call(protocol.ClusterStatus())))
    long = [r for r in d.call(protocol.ApiStatus(all_statuses=True, limit=1000))
            if r.queue is protocol.Queue.LONG]
    return shlex.split(line.format(task=tmp / "t.yaml", big=tmp / "big.yaml", env=tmp / ".env",
                                   slow=tmp / "slow.yaml", all=names,
                                   request=long[0].id if long else "-"))


def _scrub(value):
    """Times and ids differ between two daemons; nothing else may."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in TIMES}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _state(d: Daemon) -> object:
    """Clusters, their jobs, managed jobs; a cluster gone while it is read: unequal to all."""
    try:
        return _read_state(d)
    except ServerError:
        return object()


def _read_state(d: Daemon) -> dict:
    clusters = d.call(protocol.ClusterStatus())
    return _scrub(json.loads(json.dumps({
        "clusters": {c.name: [c.status, c.num_nodes, c.autostop, c.autostop_down, c.resources]
                     for c in clusters},
        "jobs": {c.name: [[j.job_id, str(j.status)] for j in d.call(protocol.JobQueue(cluster=c.name))]
                 for c in clusters},
        "managed": [[j.job_id, j.name, str(j.status)] for j in d.call(protocol.JobsQueue())],
    })))


@pytest.mark.parametrize("form", FORMS, ids=[f.readme for f in FORMS])
def test_the_skypilot_form_does_what_the_skyd_form_does(pair, form):
    tmp, daemons = pair
    seen = []
    for d, line in zip(daemons, (form.sky, form.skyd)):
        for step in filter(None, (s.strip() for s in form.setup.split(";"))):
            d.skyctl(*_words(d, tmp, step), check=True, cwd=tmp)
        p = d.skyctl(*_words(d, tmp, line), cwd=tmp)
        out = AGES.sub("<t>", UUID.sub("<id>", p.stdout)).replace(str(d.state_dir), "<state>")
        seen.append((p.returncode, out if form.view == "out" else None))
    assert seen[0][0] == 0, seen
    assert seen[0] == seen[1]
    # Jobs end and teardowns finish a moment apart on the two daemons: the same in the end.
    states: list = []
    assert wait_until(lambda: states.append([_state(d) for d in daemons]) or
                      states[-1][0] == states[-1][1], 30), states[-1]


def test_every_readme_row_is_run():
    """Each `sky ...` form in the table's first column is a row above (or not in skyd)."""
    text = (ROOT / "README.md").read_text()
    table = text.split("### Coming from SkyPilot", 1)[1].split("\n|---", 1)[1].split("\n\n", 1)[0]
    readme = {form for row in table.splitlines()[1:]
              for form in re.findall(r"`(sky [^`]*)`", row.split("|")[1])}
    assert len(readme) > 30
    assert readme - NOT_IN_SKYD == {f.readme for f in FORMS}
