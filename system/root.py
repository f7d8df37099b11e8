"""Root: every path the agent touches, below `/`, a sandbox, or a mounted image (rule 2).

root= is a jail (rule 8). Below a root that is not the running system, a system path is
resolved component by component as a chroot would see it: an absolute link in the image
means that path inside the image (`/etc/resolv.conf -> /run/systemd/...` is
`<root>/run/systemd/...`), a relative one is read from its directory, and `..` or a link
that climbs above the root is refused (PathEscapesRoot), as openat2's RESOLVE_BENEATH
would, where a chroot would clamp it. Images are untrusted: builders run the agent as
root on them, so a link must never make it act on the build host.

Which component is followed:
- `root / path` resolves every directory on the way and keeps the last component as
  named: the entry itself, so that lstat, readlink, unlink and rename act on a link, not
  on what it names (deprovision removes the link `/var/lib/dbus/machine-id`, never
  `/etc/machine-id`). Reading through it with the kernel follows a final link as the
  host sees it: read a file that may be a link with `root.follow(path)`.
- `root.follow(path)` also follows a final link, inside the root: what open() sees.
- `root.contain(real)` does the same for a real path built by joining names below a
  root path (pathlib does not ask the Root): FileSystem checks every path it is given.

On the host root nothing can escape, and a boot asks for a few hundred paths: there
`root / path` stays a plain prefix, with no look at the file system.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from system.errors import PathEscapesRoot, SymlinkLoop

# Links followed for one path before it counts as a loop (Linux's own limit is 40).
MAX_LINK_HOPS = 40


class Root:
    """A file system root. `root / "etc/hostname"` is that file inside this root."""

    def __init__(self, base: str | Path = "/") -> None:
        self.base = Path(base).resolve()
        self._is_host = str(self.base) == "/"
        self._prefix = str(self.base)
        # Host paths already made: the checks of a boot ask for the same few dozen often,
        # and each Path is parsed anew (pathlib is slow at that). Other roots resolve
        # every time: the agent's own changes (a directory made, a link removed) would
        # make a cached resolution stale.
        self._paths: dict[str, Path] = {}

    @property
    def is_host(self) -> bool:
        """True when this root is the running system's `/`."""
        return self._is_host

    def __truediv__(self, system_path: str | Path) -> Path:
        """The real path of an absolute or relative system path inside this root, with its
        directories resolved inside the root and its last component not followed."""
        if self._is_host:
            key = str(system_path)
            real = self._paths.get(key)
            if real is None:
                relative = key.lstrip("/")
                real = self._paths[key] = self.base / relative if relative else self.base
            return real
        return self._resolve(str(system_path), follow_last=False)

    def follow(self, system_path: str | Path) -> Path:
        """Like `root / path`, but a final link is followed too, inside the root."""
        if self._is_host:
            return self / system_path
        return self._resolve(str(system_path), follow_last=True)

    def contain(self, real: str | Path, *, follow: bool = False) -> Path:
        """A real path below this root, resolved again inside it (PathEscapesRoot when it
        is not below the root at all). For paths built by joining names to a root path."""
        if self._is_host:
            return Path(real)
        text = os.fspath(real)
        if text != self._prefix and not text.startswith(self._prefix + "/"):
            raise PathEscapesRoot(text, self._prefix, None,
                                  "it is not below the root: the agent acts only inside it")
        return self._resolve(text[len(self._prefix):] or "/", follow_last=follow)

    def system_path(self, real: str | Path) -> str:
        """The path as the VM sees it (`/etc/hostname`) for a real path inside the root."""
        if self._is_host and isinstance(real, Path) and real.is_absolute():
            return str(real)  # already the VM's path: no need to parse it again
        rel = str(Path(real).relative_to(self.base))
        return "/" if rel == "." else "/" + rel

    def _resolve(self, system_path: str, *, follow_last: bool) -> Path:
        """Walk the path below the root one component at a time, as a chroot would."""
        shown = "/" + system_path.lstrip("/")
        done: list[str] = []  # components below the base, none of them a link
        todo = [name for name in reversed(system_path.split("/")) if name not in ("", ".")]
        hops = 0
        link: str | None = None  # the last link followed, for the error messages
        while todo:
            name = todo.pop()
            if name == "..":
                if not done:
                    raise PathEscapesRoot(shown, self._prefix, link)
                done.pop()
                continue
            if not todo and not follow_last:
                done.append(name)
                break
            real = self._prefix + "/" + "/".join([*done, name])
            try:
                is_link = stat.S_ISLNK(os.lstat(real).st_mode)
            except (FileNotFoundError, NotADirectoryError):
                is_link = False  # not there (yet): the rest is names, as mkdir -p makes them
            if not is_link:
                done.append(name)
                continue
            hops += 1
            link = "/" + "/".join([*done, name])
            if hops > MAX_LINK_HOPS:
                raise SymlinkLoop(shown, self._prefix, link)
            target = os.readlink(real)
            if target.startswith("/"):
                done = []  # an absolute link starts again at the root, not at the host's /
            todo += [part for part in reversed(target.split("/")) if part not in ("", ".")]
        return Path(self._prefix + "/" + "/".join(done)) if done else self.base

    def __repr__(self) -> str:
        return f"Root({str(self.base)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Root) and other.base == self.base

    def __hash__(self) -> int:
        return hash(self.base)
