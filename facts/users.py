"""Users and groups of the root: /etc/login.defs UID_MIN, /etc/passwd, /etc/group.

Read through the Root, never with the host's pwd/grp modules: an image root's
users are not the host's.
"""

from typing import NamedTuple

from facts.hardware import read_text
from system.errors import ProbeFailed
from system.root import Root

DEFAULT_UID_MIN = 1000


class User(NamedTuple):
    """A line of /etc/passwd."""

    name: str
    uid: int
    gid: int
    gecos: str
    home: str
    shell: str


class Group(NamedTuple):
    """A line of /etc/group."""

    name: str
    gid: int
    members: tuple[str, ...]


def parse_login_defs_uid_min(text: str) -> int:
    """UID_MIN from login.defs text; the shadow-utils default (1000) when unset."""
    value = DEFAULT_UID_MIN
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "UID_MIN":
            try:
                value = int(fields[1], 0)
            except ValueError:
                raise ValueError(f"UID_MIN {fields[1]!r} is not a number") from None
    return value


def uid_min(root: Root) -> int:
    """The lowest uid of a regular user; below it are system users."""
    try:
        text = root.follow("etc/login.defs").read_text(errors="replace")
    except FileNotFoundError:
        return DEFAULT_UID_MIN
    except OSError as err:
        raise ProbeFailed(f"UID_MIN: cannot read /etc/login.defs: {err.strerror}") from None
    try:
        return parse_login_defs_uid_min(text)
    except ValueError as err:
        raise ProbeFailed(f"UID_MIN: /etc/login.defs: {err}") from None


def parse_passwd(text: str) -> dict[str, User]:
    """/etc/passwd text as name -> User; NIS '+'/'-' lines are skipped."""
    users: dict[str, User] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith(("#", "+", "-")):
            continue
        fields = line.split(":")
        if len(fields) != 7:
            raise ValueError(f"passwd line {number} has {len(fields)} fields, expected 7")
        name, _, uid, gid, gecos, home, shell = fields
        try:
            users.setdefault(name, User(name, int(uid), int(gid), gecos, home, shell))
        except ValueError:
            raise ValueError(f"passwd line {number}: uid/gid are not numbers") from None
    return users


def parse_group(text: str) -> dict[str, Group]:
    """/etc/group text as name -> Group."""
    groups: dict[str, Group] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith(("#", "+", "-")):
            continue
        fields = line.split(":")
        if len(fields) != 4:
            raise ValueError(f"group line {number} has {len(fields)} fields, expected 4")
        name, _, gid, members = fields
        try:
            groups.setdefault(name, Group(name, int(gid),
                                          tuple(m for m in members.split(",") if m)))
        except ValueError:
            raise ValueError(f"group line {number}: gid is not a number") from None
    return groups


def users(root: Root) -> dict[str, User]:
    """The root's users by name."""
    try:
        return parse_passwd(read_text(root, "/etc/passwd", "users"))
    except ValueError as err:
        raise ProbeFailed(f"users: /etc/passwd: {err}") from None


def groups(root: Root) -> dict[str, Group]:
    """The root's groups by name."""
    try:
        return parse_group(read_text(root, "/etc/group", "groups"))
    except ValueError as err:
        raise ProbeFailed(f"groups: /etc/group: {err}") from None


def user(root: Root, name: str) -> User | None:
    """One user, or None when the root has no such user."""
    return users(root).get(name)


def is_system_user(root: Root, name: str) -> bool:
    """True when the user exists with a uid below UID_MIN (root included)."""
    found = user(root, name)
    return found is not None and found.uid < uid_min(root)
