"""A real Debian root file system for tests, built once with mmdebstrap and cached.

The first build fetches packages from the Debian mirror (the only network these tests
use, and only inside mmdebstrap) and takes a few minutes; it is kept as a tarball under
CACHE_DIR, named by a hash of everything that shapes it, so later runs on the same
machine only extract it (a few seconds). Each test gets its own fresh copy.

    from tests.support.debian_root import debian_root  # the fixture: a fresh copy per test
    def test_x(debian_root): ...

or `fresh_debian_root(path, packages, suite="trixie")` for a root with more packages or of
another release (each its own cache entry). Debian 12 (bookworm, Python 3.11, the host's)
is the default; Debian 13 (trixie, Python 3.13) is the second release the e2e suite runs
on. Measured here: the first build took 31-72 s (deb.debian.org, 2 CPUs), a tarball is
200-250 MB, and a fresh copy takes about 2 s.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

# Overridable so CI can put the cache where it keeps caches between jobs.
CACHE_DIR = Path(os.environ.get("WAAGENT_TEST_CACHE", "/var/cache/waagent-graph-tests"))


@dataclass(frozen=True)
class Suite:
    """A Debian release a root is built from, and the python3 it ships."""

    codename: str
    version: str
    python: str  # major.minor of its python3 package

    def __str__(self) -> str:
        return f"Debian {self.version} ({self.codename}, Python {self.python})"


SUITES: dict[str, Suite] = {suite.codename: suite for suite in (
    Suite("bookworm", "12", "3.11"),
    Suite("trixie", "13", "3.13"),
)}
SUITE = "bookworm"  # the default release
MIRROR = "http://deb.debian.org/debian"
# What an Azure image has that the agent works on: sshd, sudo, ip, a DHCP client.
# minbase already holds passwd (useradd/userdel/usermod) and login.
DEFAULT_PACKAGES: tuple[str, ...] = ("openssh-server", "sudo", "iproute2", "isc-dhcp-client")
# Bump when the build recipe changes in a way the key below does not capture.
RECIPE_VERSION = 1
BUILD_TIMEOUT = 3600


def skip_reason(packages: Sequence[str] = DEFAULT_PACKAGES, suite: str = SUITE) -> str | None:
    """Why a Debian root cannot be had here (None when it can)."""
    if os.geteuid() != 0:
        return "a Debian root needs root (mmdebstrap, device nodes, chroot)"
    if cached_tarball(packages, suite).exists():
        return None
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is missing (apt-get install mmdebstrap) and no cached Debian root"
    return None


def cache_key(packages: Sequence[str], suite: str = SUITE) -> str:
    """A short hash of everything that shapes the root."""
    recipe = {"suite": SUITES[suite].codename, "mirror": MIRROR, "variant": "minbase",
              "packages": sorted(set(packages)), "recipe": RECIPE_VERSION}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def cached_tarball(packages: Sequence[str] = DEFAULT_PACKAGES, suite: str = SUITE) -> Path:
    """Where the root built from these packages is (or will be) kept."""
    return CACHE_DIR / f"debian-{suite}-{cache_key(packages, suite)}.tar"


def ensure_tarball(packages: Sequence[str] = DEFAULT_PACKAGES, suite: str = SUITE) -> Path:
    """The cached tarball, built first when missing (one builder at a time: a file lock)."""
    tarball = cached_tarball(packages, suite)
    if tarball.exists():
        return tarball
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel test run may be building it now
        if tarball.exists():
            return tarball
        partial = tarball.with_name(f".{tarball.name}.{os.getpid()}.partial")
        started = time.monotonic()
        try:
            subprocess.run(
                ["mmdebstrap", "--mode=root", "--variant=minbase", "--format=tar",
                 "--include=" + ",".join(sorted(set(packages))),
                 # No documentation or translations: a smaller root, faster copies.
                 "--dpkgopt=path-exclude=/usr/share/{doc,man,locale,info}/*",
                 suite, str(partial), MIRROR],
                check=True, timeout=BUILD_TIMEOUT, stdin=subprocess.DEVNULL,
                capture_output=True, text=True)
        except subprocess.CalledProcessError as err:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"mmdebstrap failed ({err.returncode}): {err.stderr[-3000:]}") \
                from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        # Only a complete build gets the cache name: an interrupted one is never reused.
        os.replace(partial, tarball)
        (CACHE_DIR / f"{tarball.name}.built").write_text(
            f"built in {time.monotonic() - started:.0f} s from {SUITES[suite]} "
            f"with packages {sorted(set(packages))}\n")
    return tarball


def fresh_debian_root(target: Path, packages: Sequence[str] = DEFAULT_PACKAGES,
                      suite: str = SUITE) -> Path:
    """A new copy of the cached Debian root of `suite` at `target` (created; must not
    exist yet)."""
    tarball = ensure_tarball(packages, suite)
    target.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-p", "--numeric-owner", "--xattrs", "--xattrs-include=*",
                    "-f", str(tarball), "-C", str(target)],
                   check=True, timeout=600, capture_output=True)
    return target


@pytest.fixture
def debian_root(tmp_path: Path) -> Iterator[Path]:
    """A fresh Debian root (minbase, sshd, sudo, iproute2, dhclient) for this test.

    Skips with the reason when not root or mmdebstrap is missing (CI has both).
    """
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    yield fresh_debian_root(tmp_path / "image")
