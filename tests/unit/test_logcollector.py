"""Log collection: the manifest, globs inside the root, the caps, redaction, the archive,
and the daemon's periodic collection (tasks/logcollector.py)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import pytest

from graph.context import make_context
from system import Root
from system.runner import Result
from tasks import logcollector as lc
from tasks.logcollector import (
    Candidate,
    Found,
    Redactor,
    Refused,
    choose,
    expand_glob,
    parse_manifest,
    resolve,
)

VARIABLES = {"$LIB_DIR": "/var/lib/waagent", "$LOG_DIR": "/var/log/azure",
             "$AGENT_LOG": "/var/log/waagent.log"}
MiB = 1024 * 1024
# pytest itself holds more than the collector process may: in-process runs lift the limit.
UNLIMITED = 1 << 40
KEY = (b"-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAsecretkeymaterial0123456789\n"
       b"c2VjcmV0a2V5bWF0ZXJpYWwyc2Vjcm\n-----END RSA PRIVATE KEY-----\n")


# -- the manifest ----------------------------------------------------------------------------

def test_manifest_lines_expand_variables_and_bad_lines_are_reported() -> None:
    text = ("# a comment\n\necho,### Logs ###\ncopy,$AGENT_LOG*\nll,$LIB_DIR\n"
            "cat,/proc/mounts\ndiskinfo,\nnonsense\ncopy,relative/path\n"
            "copy,/var/log/../../etc/shadow\ncopy,$LOG_DIR/**\n")
    entries, problems = parse_manifest(text, VARIABLES)
    assert [(e.command, e.argument) for e in entries] == [
        ("echo", "### Logs ###"), ("copy", "/var/log/waagent.log*"),
        ("ll", "/var/lib/waagent"), ("cat", "/proc/mounts"), ("copy", "/var/log/azure/**")]
    assert len(problems) == 4
    assert any("line 7" in p and "diskinfo" in p for p in problems)
    assert any("not an absolute path" in p for p in problems)
    assert any("'..'" in p for p in problems)


@pytest.mark.parametrize("full", [False, True])
def test_shipped_manifests_parse_cleanly_and_take_the_agent_log_first(full: bool) -> None:
    entries, problems = parse_manifest(lc.manifest_text(full), VARIABLES)
    assert problems == []
    copies = [e.argument for e in entries if e.command == "copy"]
    assert copies[0] == "/var/log/waagent.log"
    for wanted in ("/var/lib/waagent/history/*/waagent_status.json", "/var/log/azure/**",
                   "/var/lib/waagent/*/config/*.settings", "/var/log/syslog*",
                   "/var/log/messages*"):
        assert wanted in copies
    assert ("cat", "/proc/mounts") in [(e.command, e.argument) for e in entries]


# -- the caps and the priority ---------------------------------------------------------------

def found(path: str, size: int, mtime: float = 0.0) -> Found:
    return Found(path, Path(path), size, mtime, (0, hash(path)))


def test_the_archive_fills_by_rank_cuts_large_files_and_drops_large_compressed_ones() -> None:
    candidates = [
        Candidate(found("/var/log/syslog", 100 * MiB), (3, 0.0)),
        Candidate(found("/var/log/waagent.log", 40 * MiB), (0, -2.0)),
        Candidate(found("/var/log/waagent.log.1.gz", 31 * MiB), (1, -1.0)),
        Candidate(found("/var/log/waagent.log.2.gz", 5 * MiB), (1, -0.5)),
        Candidate(found("/var/log/azure/a.log", 29 * MiB), (2, 0.0)),
        Candidate(found("/var/log/azure/b.log", 29 * MiB), (2, 1.0)),
        Candidate(found("/var/log/azure/c.log", 29 * MiB), (2, 2.0)),
        Candidate(found("/var/log/azure/d.log", 29 * MiB), (2, 3.0)),
        Candidate(found("/etc/hostname", 10), (4, 0.0)),
    ]
    picks, left = choose(candidates)
    taken = [(p.found.shown, p.take, p.tail) for p in picks]
    assert taken[0] == ("/var/log/waagent.log", 30 * MiB, True)
    assert taken[1] == ("/var/log/waagent.log.2.gz", 5 * MiB, False)
    assert [t[0] for t in taken[2:5]] == ["/var/log/azure/a.log", "/var/log/azure/b.log",
                                          "/var/log/azure/c.log"]
    # d.log (29 MiB) no longer fits in 150 MiB, nor the cut syslog; the small file does.
    assert taken[-1] == ("/etc/hostname", 10, False)
    assert sum(p.take for p in picks) <= 150 * MiB
    reasons = dict(left)
    assert "cannot be cut" in reasons["/var/log/waagent.log.1.gz"]
    assert "archive is full" in reasons["/var/log/azure/d.log"]
    assert "archive is full" in reasons["/var/log/syslog"]


def test_a_cut_file_is_named_as_waagent_names_it() -> None:
    pick = lc.Pick(found("/var/log/syslog.1", 40 * MiB), 30 * MiB, True)
    assert lc.archive_name(pick) == "truncated_var_log_syslog.1"
    assert lc.archive_name(pick._replace(tail=False)) == "var/log/syslog.1"


# -- redaction -------------------------------------------------------------------------------

def redact(text: bytes, literals: tuple[bytes, ...] = (), by_line: bool = False,
           ) -> tuple[bytes, int]:
    """Fed at once, or a line at a time (blocks always end at a line's end)."""
    redactor = Redactor(literals)
    parts = text.splitlines(keepends=True) if by_line else [text]
    return b"".join(redactor.feed(p) for p in parts), redactor.count


def test_private_keys_are_dropped_from_begin_to_end_across_blocks() -> None:
    out, count = redact(b"before\n" + KEY + b"after\n", by_line=True)
    assert b"secretkeymaterial" not in out and b"c2VjcmV0" not in out
    assert b"before\n" in out and out.endswith(b"after\n") and count >= 1


def test_a_key_on_one_line_and_a_tail_that_starts_inside_a_key() -> None:
    one_line = b'{"key": "' + KEY.replace(b"\n", b"\\n") + b'"}\n'
    out, _ = redact(b"x " + KEY.replace(b"\n", b" ") + b"\n" + one_line)
    assert b"secretkeymaterial" not in out
    tail = KEY[40:] + b"later line\n"
    out, count = redact(tail)
    assert b"c2VjcmV0" not in out and b"later line" in out and count == 1


def test_protected_settings_passwords_and_custom_data_lose_their_values() -> None:
    settings = (b'{"runtimeSettings":[{"handlerSettings":{"protectedSettingsCertThumbprint":'
                b'"ABC","protectedSettings":"MIIBsecret\\"blob==","publicSettings":'
                b'{"greeting":"hello"}}}]}\n')
    out, count = redact(settings)
    assert b"MIIBsecret" not in out and b'"greeting":"hello"' in out
    assert b'"protectedSettings":"<redacted by waagent>"' in out and count == 1
    out, _ = redact(b'{"protectedSettings": {"secret": "s3cret"}, "a": 1}\n')
    assert b"s3cret" not in out
    xml = (b"<ovf><UserPassword>Demo-Passw0rd!</UserPassword><CustomData>Y3VzdG9t"
           b"</CustomData>\n<ns1:CustomData>\nbGluZTE=\nbGluZTI=\n</ns1:CustomData><x/>\n")
    out, _ = redact(xml)
    assert b"Demo-Passw0rd!" not in out and b"Y3VzdG9t" not in out
    assert b"bGluZTE" not in out and b"bGluZTI" not in out and b"<x/>" in out
    out, _ = redact(b'cmd --password "hunter22"\n{"password": "Demo-Passw0rd!"}\n')
    assert b"Demo-Passw0rd!" not in out


def test_literal_secrets_are_masked_and_plain_text_passes_as_it_is() -> None:
    out, count = redact(b"ran: echo hello from custom data script\n",
                        (b"echo hello from custom data script",))
    assert b"hello from" not in out and count == 1
    plain = b"2024-01-01T00:00:00Z INFO the daemon started\n" * 100
    assert redact(plain) == (plain, 0)


# -- globs and files inside the root ---------------------------------------------------------

@pytest.fixture
def vm(tmp_path: Path) -> Path:
    root = tmp_path / "vm"
    for name, text in {"var/log/waagent.log": "agent\n", "var/log/waagent.log.1": "old\n",
                       "var/log/azure/Ext/1.0/handler.log": "ext\n",
                       "var/log/azure/Ext/.hidden": "h\n",
                       "var/lib/waagent/Ext-1.0/config/0.settings": "{}\n",
                       "var/lib/waagent/Cert.prv": "key\n", "etc/shadow": "root:x\n",
                       "proc/kcore": "KCORE-CONTENT\n", "etc/hostname": "vm\n"}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_globs_stay_in_the_root_and_skip_hidden_names(vm: Path) -> None:
    root = Root(vm)
    assert expand_glob(root, "/var/log/waagent.log*") == ["/var/log/waagent.log",
                                                           "/var/log/waagent.log.1"]
    assert "/var/log/azure/Ext/1.0/handler.log" in expand_glob(root, "/var/log/azure/**")
    assert not any(".hidden" in p for p in expand_glob(root, "/var/log/azure/**"))
    assert expand_glob(root, "/var/lib/waagent/*/config/*.settings") == [
        "/var/lib/waagent/Ext-1.0/config/0.settings"]
    assert len(expand_glob(root, "/**", limit=5)) == 5


def test_links_out_of_the_root_devices_proc_and_secret_files_are_refused(vm: Path) -> None:
    root = Root(vm)
    logs = vm / "var/log/azure"
    os.symlink("/etc/shadow", logs / "absolute")  # inside the root: the image's shadow
    os.symlink("../../../../../../../etc/passwd", logs / "climbing")
    os.symlink("/var/lib/waagent/Cert.prv", logs / "key.log")
    os.mkfifo(logs / "fifo")
    os.symlink("/proc/kcore", logs / "core.log")
    absolute = resolve(root, "/var/log/azure/absolute")
    assert isinstance(absolute, Refused) and "leads to /etc/shadow" in absolute.why
    climbing = resolve(root, "/var/log/azure/climbing")
    assert isinstance(climbing, Refused) and "outside the root" in climbing.why
    assert isinstance(resolve(root, "/var/log/azure/key.log"), Refused)
    assert isinstance(resolve(root, "/var/log/azure/fifo"), Refused)
    assert isinstance(resolve(root, "/var/log/azure/core.log"), Refused)
    assert isinstance(resolve(root, "/var/lib/waagent/Cert.prv"), Refused)
    assert resolve(root, "/var/log/azure") is None  # a directory: nothing to copy
    # The running system: /proc and /dev are never read, whatever the manifest says.
    host = Root("/")
    for path in ("/proc/kcore", "/dev/sda", "/dev/null", "/sys/kernel/notes"):
        assert isinstance(resolve(host, path), Refused), path


# -- the collection --------------------------------------------------------------------------

def test_collect_builds_the_archive_and_results_within_the_caps(vm: Path) -> None:
    logs = vm / "var/log"
    with open(logs / "syslog", "wb") as big:
        big.write(b"old line\n" * 10 + b"-" * 4000 + b"\n")
        big.write(KEY + b"newest line\n")
    (logs / "syslog.2.gz").write_bytes(os.urandom(5000))
    ctx = make_context({"root": str(vm)})
    outcome = lc.collect(ctx, file_cap=2000, total_cap=3000, memory_limit=UNLIMITED)
    with zipfile.ZipFile(outcome.archive) as archive:
        names = archive.namelist()
        results = archive.read("results.txt").decode()
        tail = archive.read("truncated_var_log_syslog")
    assert names[0] == "var/log/waagent.log"
    assert "var/lib/waagent/Cert.prv" not in names and "etc/shadow" not in names
    assert b"newest line" in tail and b"secretkeymaterial" not in tail
    assert "left out /var/log/syslog.2.gz" in results and "cannot be cut" in results
    assert "taken    /var/log/syslog (tail, 2000 b" in results
    assert "secret" in results  # the redaction is counted
    assert (outcome.results.read_bytes().decode() == results)
    assert oct(outcome.archive.stat().st_mode & 0o777) == "0o600"
    assert not [p for p in outcome.archive.parent.iterdir() if p.name.startswith(".")]


def test_a_hostile_manifest_is_bounded(vm: Path) -> None:
    os.symlink("/", vm / "var/log/hostroot")
    os.symlink("../../../../../../../../etc", vm / "var/log/hostetc")
    manifest = ("copy,/proc/kcore\ncopy,/var/log/../../etc/shadow\ncopy,/var/log/hostroot/etc/*\n"
                "copy,/var/log/hostetc/shadow\ncopy,/dev/*\ncopy,/var/lib/waagent/*\n"
                "cat,/proc/kcore\ncat,/etc/shadow\nll,/var/log/hostetc\n"
                "copy,/var/lib/waagent/logcollector/*\n")
    ctx = make_context({"root": str(vm)})
    outcome = lc.collect(ctx, manifest=manifest, memory_limit=UNLIMITED)
    with zipfile.ZipFile(outcome.archive) as archive:
        names = archive.namelist()
        results = archive.read("results.txt").decode()
    # /var/log/hostroot -> / is this root's /, never the host's.
    assert sorted(names) == ["etc/hostname", "results.txt"]
    assert "climbs with '..'" in results
    assert "refused  /proc/kcore" in results and "refused  /var/lib/waagent/Cert.prv" in results
    assert "KCORE-CONTENT" not in results and "root:x" not in results
    assert "leads outside the root" in results


def test_the_collector_stops_itself_over_its_memory_limit(vm: Path) -> None:
    ctx = make_context({"root": str(vm)})
    with pytest.raises(lc.OverMemory, match="over its limit"):
        lc.collect(ctx, memory_limit=1)
    assert not (vm / "var/lib/waagent/logcollector/logs.zip").exists()


# -- the daemon's periodic collection --------------------------------------------------------

class FakeStarted:
    def __init__(self, code: int) -> None:
        self.code = code
        self.finished = False

    def done(self) -> bool:
        return self.finished

    def wait(self, *, check: bool = True) -> Result:
        return Result(("collector",), self.code, "", "")

    def stop(self) -> None:
        self.finished = True


def test_periodic_collection_first_after_five_minutes_then_every_period(vm: Path) -> None:
    conf = vm / "waagent.conf"
    conf.write_text("Logs.CollectPeriod=600\n")
    ctx = make_context({"root": str(vm), "conf": str(conf)})
    now = [1000.0]
    started: list[FakeStarted] = []
    sent: list[Path] = []

    def start(ctx: Any, argv: list[str]) -> Any:
        assert "-collect-logs" in argv and f"root={vm}" in argv
        started.append(FakeStarted(0))
        return started[-1]

    def send(ctx: Any, target: Any, archive: Path) -> int:
        sent.append(archive)
        return 123

    periodic = lc.PeriodicCollection(lambda: now[0], start=start, send=send)
    target = object()
    now[0] += 299
    assert periodic.tick(ctx, target) is None and not started
    now[0] += 2
    assert periodic.tick(ctx, None) is None and not started  # no goal state yet
    periodic.tick(ctx, target)
    assert len(started) == 1
    assert periodic.tick(ctx, target) is None  # still running: the loop goes on
    started[0].finished = True
    outcome = periodic.tick(ctx, target)
    assert outcome is not None and outcome["result"] == "uploaded" and outcome["bytes"] == 123
    assert sent == [vm / "var/lib/waagent/logcollector/logs.zip"]
    now[0] += 599
    periodic.tick(ctx, target)
    assert len(started) == 1
    now[0] += 1
    periodic.tick(ctx, target)
    assert len(started) == 2


def test_a_collector_over_its_memory_stops_periodic_collection(vm: Path) -> None:
    ctx = make_context({"root": str(vm)})
    now = [0.0]
    runs = [FakeStarted(lc.EXIT_MEMORY)]
    periodic = lc.PeriodicCollection(lambda: now[0], first_delay=0,
                                     start=lambda c, a: runs[0], send=lambda *a: 0)
    periodic.tick(ctx, object())
    runs[0].finished = True
    outcome = periodic.tick(ctx, object())
    assert outcome is not None and "exit 3" in outcome["result"]
    now[0] += 10 ** 6
    runs[0] = FakeStarted(0)
    assert periodic.tick(ctx, object()) is None and periodic.running is None
    assert periodic.disabled


def test_logs_collect_off_never_starts(vm: Path) -> None:
    conf = vm / "waagent.conf"
    conf.write_text("Logs.Collect=n\n")
    ctx = make_context({"root": str(vm), "conf": str(conf)})
    periodic = lc.PeriodicCollection(lambda: 10 ** 6, first_delay=0,
                                     start=lambda c, a: pytest.fail("started"))
    assert periodic.tick(ctx, object()) is None


def test_the_collector_runs_in_a_scope_only_where_systemd_runs(vm: Path) -> None:
    from system.scope import scope_argv

    ctx = make_context({"root": str(vm)})
    argv = lc.collector_argv(ctx)
    assert "systemd-run" not in argv and argv[-2:] == ["-collect-logs", f"root={vm}"]
    wrapped = scope_argv(["python", "-collect-logs"], unit="collect-logs",
                         properties=lc.SCOPE_LIMITS)
    assert wrapped[:3] == ["systemd-run", "--scope", "--quiet"]
    assert "CPUQuota=5%" in wrapped and "MemoryHigh=170M" in wrapped
    assert wrapped[-3:] == ["--", "python", "-collect-logs"]


def test_a_long_listing_is_cut(vm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lc, "LL_MAX_ENTRIES", 3)
    for index in range(5):
        (vm / f"var/log/f{index}").write_text("x")
    lines = lc.list_directory(Root(vm), "/var/log")
    assert len(lines) == 4 and "more, not listed" in lines[-1]
    assert lc.list_directory(Root(vm), "/../../etc") == ["  (refused: the path leaves the root)"]


def test_the_daemon_records_each_collection(vm: Path) -> None:
    from graph.daemon import Daemon

    class Stub:
        def tick(self, ctx: Any, target: Any) -> dict[str, Any]:
            return {"at": 5.0, "result": "uploaded", "bytes": 10}

    daemon = Daemon({"root": str(vm)}, run_doit=lambda argv: 0)
    daemon.log_collection = Stub()  # type: ignore[assignment]
    daemon.collect_logs()
    assert daemon.state["logs"]["result"] == "uploaded"
    assert daemon.state["monitors"]["logs"] == 5.0
