"""Root: every path the agent touches, below `/`, a sandbox, or a mounted image (rule 2)."""

from __future__ import annotations

from pathlib import Path


class Root:
    """A file system root. `root / "etc/hostname"` is that file inside this root."""

    def __init__(self, base: str | Path = "/") -> None:
        self.base = Path(base).resolve()
        self._is_host = str(self.base) == "/"
        # Real paths already made: the checks of a boot ask for the same few dozen often,
        # and each Path is parsed anew (pathlib is slow at that).
        self._paths: dict[str, Path] = {}

    @property
    def is_host(self) -> bool:
        """True when this root is the running system's `/`."""
        return self._is_host

    def __truediv__(self, system_path: str | Path) -> Path:
        """The real path of an absolute or relative system path inside this root."""
        key = str(system_path)
        real = self._paths.get(key)
        if real is None:
            relative = key.lstrip("/")
            real = self._paths[key] = self.base / relative if relative else self.base
        return real

    def system_path(self, real: str | Path) -> str:
        """The path as the VM sees it (`/etc/hostname`) for a real path inside the root."""
        rel = str(Path(real).relative_to(self.base))
        return "/" if rel == "." else "/" + rel

    def __repr__(self) -> str:
        return f"Root({str(self.base)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Root) and other.base == self.base

    def __hash__(self) -> int:
        return hash(self.base)
