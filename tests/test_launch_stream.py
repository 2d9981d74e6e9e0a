"""A synchronous launch follows into its job in one stream: the daemon streams the launch
request's log, then (once it has queued its job) the job's log, then one Result with the
job's record — on the launch's own connection, with no second request."""

from __future__ import annotations

import msgspec

from skyd import protocol
from skyd.taskspec import Task


def test_one_stream_reaches_the_job_while_it_runs(daemon):
    op = protocol.Launch(task=Task(setup="echo in-setup", run="echo first; sleep 2; echo second"),
                         cluster="one")
    frames, job_state_at_first_line = [], None
    with daemon.connect() as conn:
        for msg in conn.submit(op, follow_job=True):
            frames.append(msg)
            if isinstance(msg, protocol.Chunk) and b"first" in msg.data:
                # Asked on another connection while this stream is still open.
                [job] = daemon.call(protocol.JobQueue(cluster="one"))
                job_state_at_first_line = job.status
    kinds = [type(m).__name__ for m in frames]
    assert kinds[0] == "Accepted" and kinds[-1] == "Result", kinds
    # The request's log, its End, the switch to the job, the job's log, its End, the result.
    i = kinds.index("Following")
    assert kinds[i - 1] == "End" and kinds[-2] == "End", kinds
    assert b"in-setup" in b"".join(m.data for m in frames[:i] if isinstance(m, protocol.Chunk))
    job_out = b"".join(m.data for m in frames[i:] if isinstance(m, protocol.Chunk))
    assert job_out == b"first\nsecond\n"
    assert frames[-2].offset == len(job_out)
    assert frames[i] == protocol.Following(cluster="one", job_id=1)
    assert job_state_at_first_line == protocol.JobStatus.RUNNING     # streamed, not replayed
    result = frames[-1]
    assert result.request_id == frames[0].request_id and result.status is protocol.Status.SUCCEEDED
    launched = msgspec.convert(result.value, protocol.LaunchResult)
    assert (launched.cluster, launched.job_id) == ("one", 1)
    assert launched.job is not None and launched.job.status == "SUCCEEDED"

    # Without follow_job (an older client, or --detach-run) the stream is as it was:
    # the request's result, and the job is left to a logs request.
    frames = daemon.frames(protocol.Exec(task=Task(run="echo again"), cluster="one"))
    assert not any(isinstance(m, protocol.Following) for m in frames)
    launched = msgspec.convert(frames[-1].value, protocol.LaunchResult)
    assert launched.job_id == 2 and launched.job is None


def test_skyctl_launch_is_one_request(daemon):
    p = daemon.skyctl("launch", "-c", "solo", "echo hi; exit 3")
    assert p.returncode == 1, p.stderr                   # the job's outcome, as before
    assert p.stdout == "hi\n"                            # the task's output alone
    assert "Job 1 on solo finished: FAILED (exit status 3)." in p.stderr

    def names() -> list[str]:
        return sorted(r.name for r in daemon.call(protocol.ApiStatus(all_statuses=True))
                      if r.cluster == "solo")
    assert names() == ["launch"]                          # no second request for the job's log
    # A logs request is one the daemon does count: the check above can see a second one.
    daemon.skyctl("logs", "solo", "1")
    assert len(names()) == 2, names()

    p = daemon.skyctl("exec", "solo", "echo there")
    assert p.returncode == 0 and p.stdout == "there\n", p.stderr
    assert names().count("exec") == 1 and len(names()) == 3, names()

    p = daemon.skyctl("launch", "-c", "solo", "-d", "sleep 0.5; echo later")
    assert p.returncode == 0 and p.stdout == "", p.stderr    # -d: back once it is queued
    assert "Job 3 submitted to solo." in p.stderr
    assert daemon.wait_job("solo", 3).status == "SUCCEEDED"
