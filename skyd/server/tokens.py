"""Bearer tokens for TCP (`skyd token create | list | revoke`): who a token acts as.

A token is 256 random bits; the daemon keeps only its SHA-256 (a slow hash guards
guessable passwords, not random secrets), in one file in the state directory (root's,
0600). Writers (the daemon on an admin's request, or root's `skyd token` while no daemon
runs) take a lock and replace the file atomically; the daemon reads it again whenever it
changed (one stat per TCP connection; at once after a revoke through it; on SIGHUP), so
a token revoked is refused from the next connection on, whoever revoked it. Whoever holds
sessions opened with a token (skyd.server.revocation) is told when the token goes, and
closes them: a revoked token does not live on in a connection opened before.

Who may do what: admins (root, the admin group) create, list and revoke. A token acts as
one Unix user; one for anyone but yourself needs root, because it runs work as them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import msgspec

from skyd.identity import Caller
from skyd.protocol import ErrorCode, SkydError, TokenCreate, TokenRecord

PREFIX = "skyd_"     # recognisable in a leaked log or a secret scanner's rules


class StoredToken(msgspec.Struct):
    digest: str                  # sha256 hex of the whole token
    record: TokenRecord


class TokenDoc(msgspec.Struct):
    version: int = 1
    tokens: list[StoredToken] = []


class TokenRefused(Exception):
    """Why a presented token does not authenticate (safe to tell its bearer)."""


_dec = msgspec.json.Decoder(TokenDoc)
_enc = msgspec.json.Encoder()


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


class Tokens:
    """The token file of one daemon: read again when it changed, written under a lock."""

    def __init__(self, path: Path):
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._by_digest: dict[str, TokenRecord] = {}
        self._reading = threading.Lock()     # refresh runs in threads, one per login
        # Told the digests of tokens gone (revoked, the file removed), from any thread.
        self._on_removed: list[Callable[[set[str]], None]] = []

    def on_removed(self, callback: Callable[[set[str]], None]) -> None:
        """Call `callback(digests)` when tokens that were valid are gone (from any thread)."""
        self._on_removed.append(callback)

    def known(self, token_digest: str) -> bool:
        """Whether a token (by digest) is in the file as last read."""
        return token_digest in self._by_digest

    def expires_at(self, token_digest: str) -> float | None:
        """When a token (by digest) expires; None: never, or unknown."""
        rec = self._by_digest.get(token_digest)
        return rec.expires_at if rec is not None else None

    # ---- reading (the daemon, per TCP connection) ----------------------------------------

    def refresh(self) -> None:
        """Read the file again if it changed since the last read (one stat otherwise)."""
        stamp: tuple[int, int, int] | None = None
        by_digest: dict[str, TokenRecord] = {}
        with self._reading:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                pass
            else:
                stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
                if stamp == self._stamp:
                    return
                by_digest = {t.digest: t.record for t in self._read().tokens}
            gone = self._by_digest.keys() - by_digest.keys()
            self._stamp, self._by_digest = stamp, by_digest
        if gone:
            for callback in self._on_removed:
                callback(gone)

    def verify(self, token: str, now: float | None = None) -> TokenRecord:
        """The record a token stands for, or TokenRefused saying why (never echoing it)."""
        if not token:
            raise TokenRefused("this connection needs a token: TCP clients authenticate "
                               "with one (skyd token create on the server)")
        rec = self._by_digest.get(digest(token))
        if rec is None:
            raise TokenRefused("invalid token (unknown or revoked)")
        if rec.expires_at is not None and (now or time.time()) >= rec.expires_at:
            raise TokenRefused(f"token {rec.name!r} expired on {_date(rec.expires_at)}")
        try:
            if pwd.getpwuid(rec.uid).pw_name != rec.user:
                raise KeyError
        except KeyError:
            raise TokenRefused(f"token {rec.name!r} acts as {rec.user}, who no longer "
                               "exists on the server") from None
        return rec

    # ---- the file ----------------------------------------------------------------------

    def _read(self) -> TokenDoc:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return TokenDoc()
        try:
            return _dec.decode(data)
        except msgspec.DecodeError as e:
            raise SkydError(ErrorCode.INTERNAL, f"token file {self.path} is damaged: {e}",
                            "restore it, or remove it and create the tokens again") from None

    @contextlib.contextmanager
    def _editing(self) -> Iterator[TokenDoc]:
        """Read, let the caller change, write back atomically; one writer at a time."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                       0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            doc = self._read()
            yield doc
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            try:
                os.write(fd, _enc.encode(doc))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)          # the rename itself survives a crash
            finally:
                os.close(dfd)
        finally:
            os.close(lock)

    def records(self) -> list[TokenRecord]:
        return [t.record for t in self._read().tokens]

    def create(self, caller: Caller, op: TokenCreate, now: float | None = None) -> TokenRecord:
        """A new token as `op` says, if `caller` may make it; the answer carries the
        secret (the only time it exists outside its bearer's hands)."""
        _admins_only(caller, "create tokens")
        name = op.user or caller.user
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise SkydError(ErrorCode.NOT_FOUND, f"no user {name!r} on this host",
                            "a token acts as a Unix user of this host: create the account "
                            "first (a service account for CI: useradd --system NAME)") from None
        if pw.pw_uid != caller.uid and caller.uid != 0:
            raise SkydError(ErrorCode.PERMISSION_DENIED,
                            f"a token for {name} runs work as {name}: only root may create one",
                            f"ask root: sudo skyd token create {op.name} --user {name}")
        now = now or time.time()
        token = new_token()
        rec = TokenRecord(id=digest(token)[:12], name=op.name, user=pw.pw_name, uid=pw.pw_uid,
                          admin=op.admin, created_at=now, created_by=caller.user,
                          expires_at=None if op.expires_in is None else now + op.expires_in)
        with self._editing() as doc:
            if any(t.record.name == op.name for t in doc.tokens):
                raise SkydError(ErrorCode.CONFLICT, f"a token named {op.name!r} exists",
                                f"revoke it first (skyd token revoke {op.name}) or pick "
                                "another name")
            doc.tokens.append(StoredToken(digest(token), rec))
        return msgspec.structs.replace(rec, token=token)

    def revoke(self, caller: Caller, name: str) -> TokenRecord:
        """Remove a token (by name or id): refused from the next connection on, and the
        sessions opened with it are closed (refresh tells on_removed)."""
        _admins_only(caller, "revoke tokens")
        with self._editing() as doc:
            at = next((i for i, t in enumerate(doc.tokens)
                       if name in (t.record.name, t.record.id)), None)
            if at is None:
                raise SkydError(ErrorCode.NOT_FOUND, f"no token named {name!r}",
                                "list them with: skyd token list")
            gone = doc.tokens.pop(at).record
        self.refresh()
        return gone

    def listing(self, caller: Caller) -> list[TokenRecord]:
        _admins_only(caller, "list tokens")
        return sorted(self.records(), key=lambda r: r.created_at)


def _admins_only(caller: Caller, what: str) -> None:
    if not caller.admin:
        raise SkydError(ErrorCode.PERMISSION_DENIED, f"only admins {what} (root, or members "
                        "of the daemon's admin group)")


def _date(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT = {"": 86400, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_expiry(text: str) -> float | None:
    """`--expires`: 30d, 12h, 90m, 2w, 3600s (a bare number: days) or never; seconds."""
    if text.strip().lower() == "never":
        return None
    m = _DURATION.match(text.lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"--expires {text!r}: give a duration such as 30d, 12h, 2w, or never")
    return float(m.group(1)) * _UNIT[m.group(2)]
