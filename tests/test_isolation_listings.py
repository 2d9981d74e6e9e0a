"""Listings show people their own work (issue 11, finding 5).

Two real accounts, alice and bob, run the real skyctl against a root daemon (`team`). Bob
never sees alice's clusters, jobs, requests or managed jobs: `-u` (every user's) is for
admins and answers anyone else with a clear "admins only" error; an id, prefix or name of
alice's answers exactly as one that does not exist (the two outputs are compared with the
ids replaced). Root, an admin, still sees everything with `-u`."""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest

from conftest import wait_until, write_task
from skyctl.connection import ServerError
from skyd import protocol
from skyd.protocol import Status

ACTIVE = {"PENDING", "STARTING", "RUNNING", "RECOVERING", "CANCELLING"}


def run(person, d, *args: str):
    return person.skyctl(d, *args, cwd="/tmp")


def shape(p, token: str) -> tuple[int, str, str]:
    """What a person saw, with the id or name they asked about replaced."""
    return p.returncode, p.stdout.replace(token, "<X>"), p.stderr.replace(token, "<X>")


def leaks(p, *secrets: str, asked: str = "") -> list[str]:
    """The secrets in what a person saw (the id they asked about, quoted back, aside)."""
    text = p.stdout + p.stderr
    if asked:
        text = text.replace(f"'{asked}'", "<X>")
    return [s for s in secrets if s in text]


def assert_same_as_missing(person, d, args, real: str, missing: str, *secrets: str) -> None:
    """`args` (with "{}" for the id) answer for `real` exactly as for `missing`."""
    mine = run(person, d, *(a.format(real) for a in args))
    ghost = run(person, d, *(a.format(missing) for a in args))
    assert shape(mine, real) == shape(ghost, missing), (args, mine, ghost)
    assert mine.returncode != 0, (args, mine)
    assert not leaks(mine, *secrets, asked=real), (args, mine)


def assert_admins_only(p) -> None:
    assert p.returncode == 5, (p.returncode, p.stdout, p.stderr)
    assert "admins only" in p.stderr, p.stderr
    assert p.stdout == "", p.stdout


@pytest.fixture
def alice(people):
    return people[0]


@pytest.fixture
def bob(people):
    return people[1]


def alices_cluster(d, alice, name: str = "adev") -> None:
    p = run(alice, d, "launch", "-c", name, "echo alice-job-output")
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert "alice-job-output" in p.stdout


# ---- clusters --------------------------------------------------------------------------------

def test_status_all_users_is_for_admins(team, alice, bob):
    alices_cluster(team, alice)
    for args in (("status", "-u"), ("status", "-u", "--json"), ("status", "-u", "adev")):
        p = run(bob, team, *args)
        assert_admins_only(p)
        assert not leaks(p, "adev", alice.name), p
    # Not even for your own: -u asks for everyone's.
    assert_admins_only(run(alice, team, "status", "-u"))
    # Without -u each sees their own.
    assert json.loads(run(bob, team, "status", "--json").stdout) == []
    mine = json.loads(run(alice, team, "status", "--json").stdout)
    assert [(c["name"], c["user"]) for c in mine] == [("adev", alice.name)]
    # Root (an admin) sees everyone's with -u, and names anyone's cluster.
    every = json.loads(team.skyctl("status", "-u", "--json", check=True).stdout)
    assert [(c["name"], c["user"]) for c in every] == [("adev", alice.name)]
    named = json.loads(team.skyctl("status", "adev", "--json", check=True).stdout)
    assert [c["name"] for c in named] == ["adev"]


@pytest.mark.parametrize("args", [
    ("status", "{}"), ("status", "{}", "--json"), ("queue", "{}"), ("logs", "{}"),
    ("logs", "{}", "1", "--no-follow"), ("cancel", "{}", "1"), ("cancel", "{}", "--all"),
    ("autostop", "{}", "-i", "5"), ("down", "{}"), ("stop", "{}"), ("start", "{}"),
    ("exec", "-c", "{}", "echo intruder"),
], ids=lambda a: "-".join(a).replace("{}", "C"))
def test_someone_elses_cluster_answers_as_missing(team, alice, bob, args):
    alices_cluster(team, alice)
    before = team.call(protocol.ApiStatus(all_users=True, all_statuses=True, limit=10_000))
    assert_same_as_missing(bob, team, args, "adev", "gone", alice.name, "alice-job-output")
    # Nothing changed: her cluster and job are as they were; no request of bob's ran.
    [c] = team.call(protocol.ClusterStatus(all_users=True))
    assert (c.name, c.status, c.user, c.autostop) == ("adev", "UP", alice.name, -1.0)
    [job] = team.call(protocol.JobQueue(cluster="adev"))
    assert (job.job_id, job.status, job.user) == (1, "SUCCEEDED", alice.name)
    after = team.call(protocol.ApiStatus(all_users=True, all_statuses=True, limit=10_000))
    assert {r.id for r in after if r.queue is protocol.Queue.LONG} == \
        {r.id for r in before if r.queue is protocol.Queue.LONG}
    # Root (an admin) still reads her job.
    p = team.skyctl("logs", "adev", "1", "--no-follow")
    assert p.returncode == 0 and p.stdout == "alice-job-output\n", (p.stdout, p.stderr)


def test_launching_onto_someone_elses_name_says_only_that_it_is_taken(team, alice, bob):
    alices_cluster(team, alice)
    p = run(bob, team, "launch", "-c", "adev", "echo intruder")
    assert p.returncode == 5, (p.returncode, p.stdout, p.stderr)
    assert "cluster name 'adev' is taken by another user" in p.stderr
    assert not leaks(p, alice.name, "alice-job-output", "intruder")
    [job] = team.call(protocol.JobQueue(cluster="adev"))
    assert job.user == alice.name


# ---- requests --------------------------------------------------------------------------------

def alices_slow_launch(d, alice, workdir) -> str:
    task = write_task(workdir, "slow.yaml", "setup: sleep 30\n")
    p = run(alice, d, "launch", "--async", "-c", "aslow", str(task))
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    rid = p.stdout.strip()
    assert wait_until(lambda: d.request(rid).status is Status.RUNNING, 15)
    return rid


def test_api_status_all_users_is_for_admins(team, workdir, alice, bob):
    rid = alices_slow_launch(team, alice, workdir)
    try:
        for args in (("-u",), ("-u", "-a"), ("-u", "--json"), ("-u", "-a", "--json")):
            p = run(bob, team, "api", "status", *args)
            assert_admins_only(p)
            assert not leaks(p, rid, alice.name, "aslow")
        assert_admins_only(run(alice, team, "api", "status", "-u"))
        # Without -u each sees their own.
        for args in ((), ("-a",)):
            ids = {r["id"] for r in json.loads(
                run(bob, team, "api", "status", *args, "--json").stdout)}
            assert rid not in ids
        ids = {r["id"] for r in json.loads(run(alice, team, "api", "status", "--json").stdout)}
        assert rid in ids
        # Root sees everyone's with -u.
        for args in (("-u",), ("-u", "-a")):
            every = json.loads(team.skyctl("api", "status", *args, "--json", check=True).stdout)
            assert {r["id"]: r["user"] for r in every}.get(rid) == alice.name
    finally:
        team.call(protocol.ApiCancel(all_users=True))
        team.wait_request(rid, 20)


@pytest.mark.parametrize("args", [
    ("api", "status", "{}"), ("api", "status", "{}", "--json"), ("api", "status", "-a", "{}"),
    ("api", "logs", "{}", "--no-follow"), ("api", "logs", "{}"), ("api", "cancel", "{}"),
], ids=lambda a: "-".join(a).replace("{}", "ID"))
@pytest.mark.parametrize("length", [36, 8], ids=["full-id", "prefix"])
def test_someone_elses_request_id_answers_as_missing(team, workdir, alice, bob, args, length):
    rid = alices_slow_launch(team, alice, workdir)
    try:
        missing = str(uuid.uuid4())
        with pytest.raises(ServerError):
            team.request(missing)                       # no request anywhere has it
        assert_same_as_missing(bob, team, args, rid[:length], missing[:length],
                               rid, alice.name, "aslow", "sleep 30")
        assert team.request(rid).status is Status.RUNNING     # bob's cancel did nothing
        # Root (an admin) reads it by id and prefix.
        for ref in (rid, rid[:8]):
            [rec] = json.loads(team.skyctl("api", "status", ref, "--json", check=True).stdout)
            assert (rec["id"], rec["user"]) == (rid, alice.name)
        # Alice reads her own.
        [rec] = json.loads(run(alice, team, "api", "status", rid[:8], "--json").stdout)
        assert rec["id"] == rid
    finally:
        team.call(protocol.ApiCancel(request_ids=[rid]))
        team.wait_request(rid, 20)


def test_an_ambiguous_prefix_never_shows_someone_elses_ids(team, alice, bob):
    # Every short request gets an id too: 20 of alice's share a first hex digit somewhere.
    code = (f"from skyctl.connection import Connection\nfrom skyd import protocol\n"
            f"c = Connection({str(team.socket)!r}).connect()\n"
            f"for _ in range(20): c.call(protocol.ClusterStatus())\n")
    p = alice.python_call(code)
    assert p.returncode == 0, p.stderr
    hers = [r.id for r in team.call(protocol.ApiStatus(all_users=True, all_statuses=True,
                                                       limit=10_000)) if r.uid == alice.uid]
    assert len(hers) >= 17, hers
    firsts = [i[0] for i in hers]
    digit = max(set(firsts), key=firsts.count)
    assert firsts.count(digit) >= 2
    # Bob: nothing of hers matches (his own lookup, if its id happens to match, is his).
    p = run(bob, team, "api", "status", digit, "--json")
    assert not leaks(p, *hers, *(i[:8] for i in hers)), p
    if p.returncode == 0:
        assert {r["user"] for r in json.loads(p.stdout)} == {bob.name}, p.stdout
    else:
        assert p.returncode == 2 and f"no request matches '{digit}'" in p.stderr, p.stderr
    for args in (("api", "logs", digit, "--no-follow"), ("api", "cancel", digit)):
        p = run(bob, team, *args)
        assert not leaks(p, *hers, *(i[:8] for i in hers)), (args, p)
        # Ambiguous only among his own (his earlier commands are requests too): every id
        # counted is one he is shown, and none is hers.
        m = re.search(r"matches (\d+) requests: (.*)", p.stderr)
        if m is not None:
            shown = m.group(2).split(", ")
            assert len(shown) == min(int(m.group(1)), 5) and not set(shown) & set(hers), \
                (args, p.stderr)
    # Root (an admin) is told the prefix is ambiguous.
    p = team.skyctl("api", "status", digit)
    assert p.returncode == 2 and "requests:" in p.stderr, (p.returncode, p.stderr)


# ---- managed jobs ----------------------------------------------------------------------------

def alices_managed_job(d, alice, workdir) -> int:
    task = write_task(workdir, "managed.yaml", "name: amanaged\n"
                                               "run: echo alice-managed-output; sleep 60\n")
    p = run(alice, d, "jobs", "launch", "--async", "--json", str(task))
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    job_id = json.loads(p.stdout)["job_id"]
    assert wait_until(lambda: {j.job_id: j.status for j in d.call(
        protocol.JobsQueue(all_users=True))}.get(job_id) == "RUNNING", 60)
    return job_id


def cancel_everyones_jobs(d) -> None:
    d.call(protocol.JobsCancel(all_users=True))
    assert wait_until(lambda: all(j.status not in ACTIVE and not j.teardown_pending
                                  for j in d.call(protocol.JobsQueue(all_users=True))), 60)


def test_managed_jobs_are_private(team, workdir, alice, bob):
    job_id = alices_managed_job(team, alice, workdir)
    missing = job_id + 41
    try:
        for args in (("-u",), ("-u", "-a"), ("-u", "--json"), ("-u", "-s")):
            p = run(bob, team, "jobs", "queue", *args)
            assert_admins_only(p)
            assert not leaks(p, alice.name, "amanaged")
        assert_admins_only(run(alice, team, "jobs", "queue", "-u"))
        assert json.loads(run(bob, team, "jobs", "queue", "--json").stdout) == []
        for args in (("jobs", "logs", "{}", "--no-follow"), ("jobs", "logs", "{}"),
                     ("jobs", "logs", "--controller", "{}"), ("jobs", "cancel", "{}")):
            assert_same_as_missing(bob, team, args, str(job_id), str(missing),
                                   alice.name, "amanaged", "alice-managed-output")
        # Asked by id in the queue: no row, as for an id that does not exist.
        mine = run(bob, team, "jobs", "queue", str(job_id), "--json")
        ghost = run(bob, team, "jobs", "queue", str(missing), "--json")
        assert (mine.returncode, mine.stdout) == (ghost.returncode, ghost.stdout) == (0, "[]\n")
        # Its cluster is hers too.
        cluster = {j.job_id: j for j in team.call(protocol.JobsQueue(all_users=True))}[
            job_id].cluster
        assert_same_as_missing(bob, team, ("status", "{}"), cluster, "managed-999")
        # Still running: bob's cancel did nothing.
        time.sleep(0.3)
        assert {j.job_id: j.status for j in team.call(protocol.JobsQueue(all_users=True))
                }[job_id] == "RUNNING"
        # Root (an admin) sees and reads it.
        every = json.loads(team.skyctl("jobs", "queue", "-u", "--json", check=True).stdout)
        assert [(j["job_id"], j["user"]) for j in every] == [(job_id, alice.name)]
        for args in (("jobs", "logs", str(job_id), "--no-follow"),
                     ("jobs", "logs", "--controller", str(job_id), "--no-follow"),
                     ("status", cluster)):
            p = team.skyctl(*args)
            assert p.returncode == 0 and "error" not in p.stderr, (args, p.stdout, p.stderr)
        # Alice sees her own.
        hers = json.loads(run(alice, team, "jobs", "queue", "--json").stdout)
        assert [j["job_id"] for j in hers] == [job_id]
    finally:
        cancel_everyones_jobs(team)
