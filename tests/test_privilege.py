"""The privilege boundary itself (skyd/privilege.py), function by function, on real files,
real FIFOs and links, and a real account (alice): what the isolation tests reach only
through a daemon. Written so that a one-line break of any of them fails here (the mutation
run, TESTING.md)."""

from __future__ import annotations

import grp
import os
import subprocess
import shutil
import stat
import sys
import tempfile
from pathlib import Path

import pytest

from skyd import privilege
from skyd.privilege import JobFiles, UnsafeFile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import users  # noqa: E402

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


@pytest.fixture(autouse=True)
def scratch_cwd(tmp_path, monkeypatch):
    """Run in a scratch directory: a broken remover (the mutation run's os.scandir(None))
    empties the current directory, which must never be the checkout."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)


@pytest.fixture(autouse=True)
def calls_seen_in_this_process():
    """drop_to and rmtree_owned do their real work in run_as's forked child, where the
    mutation run cannot see which test called them (it maps a function to the tests that
    call it in the pytest process): a no-op call of each here maps them to every test of
    this file, so their mutants run against all of it."""
    privilege.drop_to(0, 0)
    privilege.rmtree_owned(Path("/nonexistent/skyd-test"))


@pytest.fixture(scope="module")
def alice():
    """(uid, gid, groups) of a real account with a supplementary group."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create and act as another user")
    pw = users.ensure_user(users.NAMES[0])
    return pw.pw_uid, pw.pw_gid, sorted(os.getgrouplist(pw.pw_name, pw.pw_gid))


@pytest.fixture
def space():
    """A root-owned directory other users may pass through, as the daemon's state dir
    (pytest's tmp_path is inside a 0700 directory)."""
    d = Path(tempfile.mkdtemp(prefix="skyd-priv-", dir="/tmp"))
    os.chmod(d, 0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---- identities --------------------------------------------------------------------------

def test_identity_of_a_known_and_an_unknown_uid(alice):
    uid, gid, _ = alice
    assert privilege.identity(uid) == (users.NAMES[0], gid, f"/home/{users.NAMES[0]}", "/bin/bash")
    assert privilege.identity(3_999_999) == ("uid3999999", 3_999_999, "/", "/bin/sh")


def test_identity_of_an_entry_without_a_shell(monkeypatch):
    entry = privilege.pwd.struct_passwd(("x", "*", 4321, 4322, "", "/home/x", ""))
    monkeypatch.setattr(privilege.pwd, "getpwuid", lambda uid: entry)
    assert privilege.identity(4321) == ("x", 4322, "/home/x", "/bin/sh")


def test_groups_and_login_env_are_the_accounts_own(alice):
    uid, gid, groups = alice
    assert sorted(privilege.groups_of(uid, gid)) == groups
    assert grp.getgrnam(users.GROUP).gr_gid in groups and gid in groups
    assert privilege.login_env(uid) == {
        "HOME": f"/home/{users.NAMES[0]}", "USER": users.NAMES[0], "LOGNAME": users.NAMES[0],
        "SHELL": "/bin/bash", "PATH": privilege.STANDARD_PATH, "LANG": "C.UTF-8"}


@root_only
def test_popen_identity_names_the_user_with_their_groups(alice):
    uid, gid, groups = alice
    args = privilege.popen_identity(uid, gid)
    assert args.keys() == {"user", "group", "extra_groups"}
    assert (args["user"], args["group"], sorted(args["extra_groups"])) == (uid, gid, groups)
    assert privilege.popen_identity(0, 0) == {}          # we are root already


@root_only
def test_exec_identity_starts_the_user_with_their_groups_without_forking_the_daemon(alice):
    """A prefix that becomes the user in the child (setpriv), so that Popen needs no ids of
    its own and can vfork: the same uid, gid and groups as popen_identity gives."""
    uid, gid, groups = alice
    prefix, args = privilege.exec_identity(uid, gid)
    assert args == {} and prefix[0].endswith("/setpriv") and prefix[-1] == "--", prefix
    out = subprocess.run([*prefix, "sh", "-c", "id -u; id -g; id -G; id -ru; id -rg"],
                         capture_output=True, text=True, env={"PATH": privilege.STANDARD_PATH},
                         check=True).stdout.split("\n")
    assert (int(out[0]), int(out[1]), sorted(map(int, out[2].split()))) == (uid, gid, groups)
    assert (int(out[3]), int(out[4])) == (uid, gid)               # real ids too
    assert privilege.exec_identity(0, 0) == ([], {})


@root_only
def test_exec_identity_sets_ids_as_numbers_where_a_name_looks_like_one(tmp_path):
    """setpriv reads an id as a name first: where a user or a group is named by digits
    (user "4243" has uid 6666 here), the ids are set as numbers by Popen instead. Run in a
    mount namespace whose /etc/passwd and /etc/group have those entries."""
    passwd, group = tmp_path / "passwd", tmp_path / "group"
    passwd.write_text(Path("/etc/passwd").read_text() + "4243:x:6666:5555::/nonexistent:/bin/sh\n")
    group.write_text(Path("/etc/group").read_text() + "4242:x:5555:\n")
    code = ("from skyd import privilege\n"
            "print(privilege.exec_identity(4243, 4242)[0] == [],"
            " privilege.exec_identity(4244, 4244)[0][0].endswith('setpriv'))")
    script = (f"mount --bind {passwd} /etc/passwd && mount --bind {group} /etc/group && "
              f'exec {sys.executable} -c "$0"')
    p = subprocess.run(["unshare", "-m", "sh", "-c", script, code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert p.stdout.split() == ["True", "True"], p.stdout + p.stderr


# ---- dropping privilege --------------------------------------------------------------------

def _whoami() -> None:
    """Report the child's credentials through run_as's error channel."""
    raise RuntimeError(f"{os.getuid()} {os.geteuid()} {os.getgid()} {os.getegid()} "
                       f"{sorted(os.getgroups())}")


@root_only
def test_run_as_drops_uid_gid_and_groups_in_a_child(alice):
    uid, gid, groups = alice
    assert privilege.run_as(uid, gid, _whoami) == f"RuntimeError: {uid} {uid} {gid} {gid} {groups}"
    assert os.geteuid() == 0 and os.getegid() == 0     # the parent kept its own


@root_only
def test_run_as_reports_success_failure_and_a_bare_exit(alice):
    uid, gid, _ = alice
    assert privilege.run_as(uid, gid, lambda: None) is None

    def boom() -> None:
        raise ValueError("no such thing")
    assert privilege.run_as(uid, gid, boom) == "ValueError: no such thing"
    assert privilege.run_as(uid, gid, lambda: os._exit(3)) == "exit status 3"


@root_only
def test_run_as_reports_at_most_4000_bytes_even_cut_inside_a_character(alice):
    uid, gid, _ = alice
    head = "ValueError: "

    def long() -> None:
        raise ValueError("x" * (3999 - len(head)) + "é" * 100)   # byte 4000 is half an é
    why = privilege.run_as(uid, gid, long)
    assert why == head + "x" * (3999 - len(head)) + "\ufffd"


def test_run_as_root_runs_in_place_and_reports_os_errors():
    ran = []
    assert privilege.run_as(0, 0, lambda: ran.append(os.getpid())) is None
    assert ran == [os.getpid()]

    def missing() -> None:
        os.stat("/nonexistent/x")
    assert "No such file or directory" in privilege.run_as(0, 0, missing)
    with pytest.raises(ValueError):             # only OSError is a result: a bug is a bug
        privilege.run_as(0, 0, lambda: int("x"))


@root_only
def test_a_failing_child_never_returns_into_the_caller(alice):
    """The child exits whatever fn raised: it must never unwind into the daemon's code
    as the user (a pipe tells whether it ever got back here)."""
    uid, gid, _ = alice
    me = os.getpid()
    r, w = os.pipe()
    try:
        def boom() -> None:
            raise SystemExit(0)
        for fn in (boom, lambda: int("x")):
            try:
                why = privilege.run_as(uid, gid, fn)
            finally:
                if os.getpid() != me:
                    os.write(w, b"the child got back into the caller")
                    os._exit(99)
            assert why and why.split(":")[0] in ("SystemExit", "ValueError")
        os.close(w)
        w = -1
        assert os.read(r, 100) == b""
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


@root_only
def test_drop_to_root_is_a_no_op(alice):
    groups = os.getgroups()
    try:
        os.setgroups([0, 4242])                 # whatever groups root holds, it keeps
        privilege.drop_to(0, 0)
        assert (os.geteuid(), os.getegid(), sorted(os.getgroups())) == (0, 0, [0, 4242])
    finally:
        os.setgroups(groups)


@root_only
def test_drop_to_is_a_no_op_for_whoever_is_not_root(alice):
    uid, gid, _ = alice
    assert privilege.run_as(uid, gid, lambda: privilege.drop_to(uid, gid)) is None
    assert privilege.run_as(uid, gid, _whoami).startswith(f"RuntimeError: {uid} {uid}")


# ---- opening files ---------------------------------------------------------------------------

def test_open_regular_opens_a_regular_file(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"hello")
    fd = privilege.open_regular(f)
    try:
        assert os.read(fd, 10) == b"hello"
        flags = os.get_inheritable(fd)
        assert flags is False                   # O_CLOEXEC
    finally:
        os.close(fd)
    fd = privilege.open_regular(tmp_path / "new", os.O_WRONLY | os.O_CREAT, 0o640)
    os.close(fd)
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o640


def test_open_regular_refuses_links_fifos_and_directories_without_blocking(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x")
    (tmp_path / "link").symlink_to(f)
    os.mkfifo(tmp_path / "fifo")
    before = open_fds()
    with pytest.raises(OSError):                # ELOOP: the final link is never followed
        privilege.open_regular(tmp_path / "link")
    with pytest.raises(UnsafeFile, match="not a regular file"):
        privilege.open_regular(tmp_path / "fifo")        # would block without O_NONBLOCK
    with pytest.raises(UnsafeFile, match="not a regular file"):
        privilege.open_regular(tmp_path)
    assert open_fds() == before                 # every refused descriptor closed


def test_open_regular_checks_the_owner(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x")
    me = os.geteuid()
    before = open_fds()
    os.close(privilege.open_regular(f, owners=(me,)))
    os.close(privilege.open_regular(f, owners=(me + 1, me)))
    with pytest.raises(UnsafeFile, match="not owned by the expected user"):
        privilege.open_regular(f, owners=(me + 1,))
    assert open_fds() == before


def test_read_regular_reads_a_range_and_nothing_of_a_missing_file(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"0123456789")
    before = open_fds()
    assert privilege.read_regular(f, 0, 4) == b"0123"
    assert privilege.read_regular(f, 3, 4) == b"3456"
    assert privilege.read_regular(f, 8, 100) == b"89"
    assert privilege.read_regular(tmp_path / "missing", 0, 10) == b""
    with pytest.raises(UnsafeFile):
        privilege.read_regular(f, 0, 4, owners=(os.geteuid() + 1,))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UnsafeFile):
        privilege.read_regular(tmp_path / "fifo", 0, 4)
    assert open_fds() == before


def test_read_small_reads_the_head_of_our_own_file_or_nothing(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x" * 100)
    before = open_fds()
    assert privilege.read_small(f) == b"x" * 64
    assert privilege.read_small(f, limit=3) == b"xxx"
    assert privilege.read_small(tmp_path / "missing") is None
    os.mkfifo(tmp_path / "fifo")
    assert privilege.read_small(tmp_path / "fifo") is None
    (tmp_path / "link").symlink_to(f)
    assert privilege.read_small(tmp_path / "link") is None
    assert open_fds() == before


# ---- the daemon's own directories ---------------------------------------------------------

def test_private_dir_creates_and_tightens(tmp_path):
    d = privilege.private_dir(tmp_path / "a" / "b")
    assert d == tmp_path / "a" / "b"
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    os.chmod(d, 0o777)
    privilege.private_dir(d)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700     # an existing one made private again
    privilege.private_dir(d, 0o711)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o711


def test_private_dir_refuses_a_link_or_a_file(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    os.chmod(tmp_path / "real", 0o755)
    with pytest.raises(UnsafeFile, match="not a directory owned by the daemon"):
        privilege.private_dir(tmp_path / "link")
    assert stat.S_IMODE(os.stat(tmp_path / "real").st_mode) == 0o755   # never followed
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError):
        privilege.private_dir(tmp_path / "file")


@root_only
def test_private_dir_refuses_a_directory_of_someone_else(tmp_path, alice):
    uid, gid, _ = alice
    d = tmp_path / "theirs"
    d.mkdir(mode=0o755)
    os.chown(d, uid, gid)
    with pytest.raises(UnsafeFile, match="not a directory owned by the daemon"):
        privilege.private_dir(d)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o755     # left as it was


def test_remove_private_tree(tmp_path):
    d = tmp_path / "ctl"
    (d / "a" / "b").mkdir(parents=True)
    (d / "a" / "b" / "f").write_text("x")
    privilege.remove_private_tree(d)
    assert not d.exists()
    privilege.remove_private_tree(d)             # gone already: no error


# ---- a job's control directory --------------------------------------------------------------

def test_job_files_paths(tmp_path):
    jf = JobFiles(tmp_path / "job")
    assert (jf.dir, jf.log, jf.exit_code, jf.cancelled) == (
        tmp_path / "job", tmp_path / "job" / "run.log", tmp_path / "job" / "exit_code",
        tmp_path / "job" / "cancelled")


@root_only
def test_open_for_runner_hands_out_append_descriptors_the_job_owns(tmp_path, alice):
    uid, gid, _ = alice
    jf = JobFiles(tmp_path / "job")
    log, code = jf.open_for_runner(uid, gid)
    try:
        os.write(log, b"first\n")
        os.write(code, b"0\n")
    finally:
        os.close(log)
        os.close(code)
    assert stat.S_IMODE(os.stat(jf.dir).st_mode) == 0o700
    st = os.stat(jf.log)
    assert (st.st_uid, st.st_gid) == (uid, gid)          # quotas apply to its owner
    assert stat.S_IMODE(st.st_mode) == 0o600
    st = os.stat(jf.exit_code)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)  # the status stays the daemon's
    log, code = jf.open_for_runner(uid, gid)    # started again after a restart: appends
    try:
        os.write(log, b"second\n")
        assert os.get_inheritable(log) is False and os.get_inheritable(code) is False
    finally:
        os.close(log)
        os.close(code)
    assert jf.log.read_bytes() == b"first\nsecond\n"


def test_open_for_runner_refuses_a_planted_link(tmp_path):
    jf = JobFiles(tmp_path / "job")
    jf.dir.mkdir()
    (tmp_path / "elsewhere").write_text("keep")
    jf.exit_code.symlink_to(tmp_path / "elsewhere")
    before = open_fds()
    with pytest.raises(OSError):
        jf.open_for_runner(os.geteuid(), os.getegid())
    assert open_fds() == before                  # the log's descriptor closed too
    assert (tmp_path / "elsewhere").read_text() == "keep"


def test_cancelled_marker(tmp_path):
    jf = JobFiles(tmp_path / "job")
    assert not jf.is_cancelled()
    jf.mark_cancelled()                          # no directory yet: ignored
    assert not jf.is_cancelled()
    jf.dir.mkdir()
    jf.mark_cancelled()
    assert jf.is_cancelled() and jf.cancelled.is_file()
    jf.mark_cancelled()                          # twice: still fine
    assert jf.is_cancelled()
    jf.cancelled.unlink()
    jf.cancelled.mkdir()                         # not a regular file: not a marker
    assert not jf.is_cancelled()


@pytest.mark.parametrize("raw, status", [
    (None, None), (b"", None), (b"0\n", 0), (b"3\n", 3), (b"-9\n", -9), (b"3", None),
    (b"x\n", None), (b"7\nleft over", None), (b"7\nmore\n", 7), (b"12\n\n", 12),
    (b"7 8\n", None)])
def test_exit_status_needs_a_whole_line(tmp_path, raw, status):
    jf = JobFiles(tmp_path)
    if raw is not None:
        jf.exit_code.write_bytes(raw)
    assert jf.exit_status() == status


# ---- a user's own directories ---------------------------------------------------------------

@root_only
def test_make_user_dir_creates_it_for_its_owner(space, alice):
    uid, gid, _ = alice
    d = privilege.make_user_dir(space, "c1", uid, gid)
    assert d == space / "c1"
    st = os.lstat(d)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o700)
    d2 = privilege.make_user_dir(space, "c2", uid, gid, mode=0o750)
    assert stat.S_IMODE(os.stat(d2).st_mode) == 0o750


@root_only
def test_make_user_dir_keeps_the_same_owners_and_replaces_anything_else(space, alice):
    uid, gid, _ = alice
    d = privilege.make_user_dir(space, "c", uid, gid)
    (d / "work").write_text("mine")
    assert privilege.make_user_dir(space, "c", uid, gid) == d
    assert (d / "work").read_text() == "mine"     # an interrupted launch, run again
    # The same name left by someone else (root here): never inherited.
    other = space / "o"
    other.mkdir()
    (other / "secret").write_text("x")
    d = privilege.make_user_dir(space, "o", uid, gid)
    st = os.lstat(d)
    assert os.listdir(d) == [] and (st.st_uid, stat.S_IMODE(st.st_mode)) == (uid, 0o700)
    # A file or a link in its place.
    (space / "f").write_text("x")
    assert os.listdir(privilege.make_user_dir(space, "f", uid, gid)) == []
    (space / "l").symlink_to("/etc")
    d = privilege.make_user_dir(space, "l", uid, gid)
    assert not d.is_symlink() and os.lstat(d).st_uid == uid and os.path.exists("/etc/passwd")


@root_only
def test_discard_user_tree_removes_it_as_its_owner(space, alice):
    uid, gid, _ = alice
    assert privilege.discard_user_tree(space, "missing") is None
    d = privilege.make_user_dir(space, "c", uid, gid)

    def fill() -> None:
        (d / "ro" / "deep").mkdir(parents=True)
        (d / "ro" / "deep" / "f").write_text("x")
        (d / "file").write_text("x")
        (d / "link").symlink_to("/etc/passwd")
        os.chmod(d / "ro" / "deep", 0o500)
        os.chmod(d / "ro", 0o500)                # read-only: the owner may still chmod it
    assert privilege.run_as(uid, gid, fill) is None
    assert privilege.discard_user_tree(space, "c") is None
    assert not d.exists() and os.path.exists("/etc/passwd")
    trash = space / ".trash"
    assert os.listdir(trash) == []
    st = os.lstat(trash)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o711)
    (space / "f").write_text("x")                # not a directory: just unlinked
    assert privilege.discard_user_tree(space, "f") is None
    assert not (space / "f").exists() and os.listdir(trash) == []


@root_only
def test_remove_user_tree_cannot_remove_what_its_owner_could_not(space, alice):
    uid, gid, _ = alice
    d = privilege.make_user_dir(space, "c", uid, gid)
    sub = d / "roots"
    sub.mkdir()
    (sub / "f").write_text("x")                 # root's, inside the user's tree
    os.chmod(sub, 0o755)
    why = privilege.remove_user_tree(d, uid, gid)
    assert why is not None and "Permission denied" in why
    assert (sub / "f").exists() and d.exists()   # as the user: root's file stays
    os.unlink(sub / "f")
    assert privilege.remove_user_tree(d, uid, gid) is None
    assert not d.exists()


@root_only
def test_rmtree_owned_empties_a_top_it_does_not_own(space, alice):
    """A tree whose top is someone else's (root's, open to all): its owner-side remover
    cannot chmod or remove the top, and must still empty it and say nothing went wrong."""
    uid, gid, _ = alice
    top = space / "shared"
    top.mkdir()
    os.chmod(top, 0o777)

    def fill() -> None:
        (top / "mine" / "ro").mkdir(parents=True)
        os.chmod(top / "mine" / "ro", 0o500)
        (top / "f").write_text("x")
    assert privilege.run_as(uid, gid, fill) is None
    assert privilege.run_as(uid, gid, lambda: privilege.rmtree_owned(top)) is None
    assert os.listdir(top) == [] and stat.S_IMODE(os.stat(top).st_mode) == 0o777


def test_rmtree_owned_removes_read_only_directories(tmp_path):
    d = tmp_path / "t"
    (d / "a" / "b").mkdir(parents=True)
    (d / "a" / "b" / "f").write_text("x")
    (d / "g").write_text("x")
    (d / "ln").symlink_to(tmp_path)
    os.chmod(d / "a" / "b", 0o500)
    os.chmod(d / "a", 0o500)
    os.chmod(d, 0o500)
    privilege.rmtree_owned(d)
    assert not d.exists() and tmp_path.exists()
    privilege.rmtree_owned(d)                    # gone: nothing to do
