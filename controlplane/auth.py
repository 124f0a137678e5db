"""Dashboard login: password hashes, roles, and when a login is required.

Two roles exist. An operator reads every page and acts (acknowledge, silence, resolve, label,
export, promote, roll back); a viewer reads every page. A password hash in the settings selects
the role at login. The dashboard requires a login whenever a hash is set, and does not start
beyond localhost without one, because anyone who reaches the port could otherwise act.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass

from controlplane.errors import ConfigurationError, ControlPlaneError
from controlplane.settings import Settings

OPERATOR = "operator"
VIEWER = "viewer"

# scrypt cost parameters: 16 MiB of memory per check, which took 80 ms on one core of a 2-core
# development VM, so guessing is slow while a login is not. They are stored in each hash, so
# raising them later keeps old hashes valid.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
SCHEME = "scrypt"

# Seconds the login form waits after a wrong password, so one session cannot guess quickly.
FAILED_LOGIN_DELAY_S = 1.0


class PermissionDenied(ControlPlaneError, PermissionError):
    """A viewer tried an action that only operators may take."""


@dataclass(frozen=True)
class User:
    """The person behind a dashboard session, as recorded in the audit log."""

    name: str
    role: str

    @property
    def can_act(self) -> bool:
        """Whether this user may change anything (operators only)."""
        return self.role == OPERATOR


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """Hash `password` with scrypt and a random salt, as `scrypt$N$r$p$salt$key` (base64 parts)."""
    if not password:
        raise ConfigurationError("the password is empty: choose a non-empty password")
    salt = secrets.token_bytes(SALT_BYTES)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=KEY_BYTES)
    return "$".join((SCHEME, str(n), str(r), str(p), _b64(salt), _b64(key)))


def verify_password(password: str, encoded: str) -> bool:
    """Check `password` against a hash made by `hash_password`, in constant time."""
    n, r, p, salt, expected = _parse(encoded)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(expected), maxmem=_maxmem(n, r))
    return hmac.compare_digest(key, expected)


def authenticate(settings: Settings, password: str) -> str | None:
    """Return the role whose password hash matches `password`, or None."""
    if settings.dashboard_password_hash and verify_password(password, settings.dashboard_password_hash):
        return OPERATOR
    if settings.dashboard_viewer_password_hash and verify_password(password, settings.dashboard_viewer_password_hash):
        return VIEWER
    return None


def is_loopback(address: str) -> bool:
    """Return whether `address` only accepts connections from this machine."""
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip().strip("[]")).is_loopback
    except ValueError:
        # A host name other than localhost may resolve to any interface.
        return False


def login_required(settings: Settings) -> bool:
    """Return whether the dashboard requires a login: a hash is set, or it listens beyond localhost."""
    has_hash = bool(settings.dashboard_password_hash or settings.dashboard_viewer_password_hash)
    return has_hash or not is_loopback(settings.dashboard_address)


def check_exposure(settings: Settings) -> None:
    """Raise ConfigurationError when the dashboard would listen beyond localhost without a password hash."""
    if is_loopback(settings.dashboard_address):
        return
    if not settings.dashboard_password_hash and not settings.dashboard_viewer_password_hash:
        raise ConfigurationError(
            f"CONTROLPLANE_DASHBOARD_ADDRESS is {settings.dashboard_address!r}, which is reachable from other machines, "
            "but no password hash is set: run 'controlplane hash-password' and set CONTROLPLANE_DASHBOARD_PASSWORD_HASH, "
            "or listen on 127.0.0.1"
        )
    for name in ("dashboard_password_hash", "dashboard_viewer_password_hash"):
        value = getattr(settings, name)
        if value:
            _parse(value, setting=name)


def local_user() -> User:
    """Return the operator of a dashboard that needs no login (localhost without a password hash)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        # getpass raises when the process's uid has no passwd entry (some containers).
        name = "unknown"
    return User(name=f"local:{name}", role=OPERATOR)


def _parse(encoded: str, setting: str = "password hash") -> tuple[int, int, int, bytes, bytes]:
    parts = encoded.strip().split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise ConfigurationError(
            f"invalid {setting}: expected 'scrypt$N$r$p$salt$key' as 'controlplane hash-password' prints it"
        )
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
    except ValueError as exc:
        raise ConfigurationError(f"invalid {setting}: {exc}; produce a new one with 'controlplane hash-password'") from exc
    return n, r, p, salt, key


def _maxmem(n: int, r: int) -> int:
    # scrypt needs 128 * N * r bytes; OpenSSL's default cap (32 MiB) rejects larger stored parameters.
    return 128 * n * r + 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
