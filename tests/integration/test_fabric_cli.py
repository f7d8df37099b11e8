"""waagent-fabric serve as a process: URLs on stdout, clean shutdown on signals, the record file."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from fabric import default_scenario


def start(*args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    process = subprocess.Popen([sys.executable, "-m", "fabric.cli", "serve", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    urls: dict[str, str] = {}
    for _ in range(3):
        line = process.stdout.readline()
        if not line:
            break
        name, url = line.split()
        urls[name] = url
    if len(urls) != 3:
        process.kill()
        _, err = process.communicate(timeout=30)
        pytest.fail(f"serve did not print its URLs: {err}")
    return process, urls


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_answers_and_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    record = tmp_path / "record.json"
    process, urls = start("default", "--record", str(record))
    try:
        assert set(urls) == {"wire", "hostplugin", "imds"}
        assert all(url.startswith("http://127.0.0.1:") for url in urls.values())
        assert requests.get(f"{urls['wire']}/?comp=versions", timeout=10).status_code == 200
        assert requests.get(f"{urls['hostplugin']}/versions", timeout=10).status_code == 200
        imds = requests.get(f"{urls['imds']}/metadata/instance?api-version=2021-02-01",
                            headers={"Metadata": "true"}, timeout=10)
        assert imds.json()["compute"]["vmId"] == default_scenario().vm_id
        process.send_signal(signal.SIGUSR1)  # dump on demand while serving
    finally:
        process.send_signal(sig)
        process.communicate(timeout=30)
    assert process.returncode == 0
    routes = [r["route"] for r in json.loads(record.read_text())["requests"]]
    assert routes == ["versions", "hgap.versions", "imds"]


def test_serve_on_given_ports(tmp_path: Path) -> None:
    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    process, urls = start("default", "--wire-port", str(ports[0]), "--hostplugin-port", str(ports[1]),
                          "--imds-port", str(ports[2]))
    try:
        assert urls == {"wire": f"http://127.0.0.1:{ports[0]}", "hostplugin": f"http://127.0.0.1:{ports[1]}",
                        "imds": f"http://127.0.0.1:{ports[2]}"}
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_serve_bad_scenario_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("username: a\nincarnation: [1]\n")
    done = subprocess.run([sys.executable, "-m", "fabric.cli", "serve", str(bad)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert f"{bad}:2:" in done.stderr and "'incarnation'" in done.stderr


def test_serve_with_a_control_channel(tmp_path: Path) -> None:
    """--control prints a fourth line; `waagent-fabric control` publishes through it."""
    process, urls = start("default", "--control", "127.0.0.1:0")
    try:
        assert process.stdout is not None
        name, control_url = process.stdout.readline().split()
        assert name == "control" and control_url.startswith("http://127.0.0.1:")
        done = subprocess.run([sys.executable, "-m", "fabric.cli", "control", control_url, "new-incarnation"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["result"] == 2
        goal_state = requests.get(f"{urls['wire']}/machine/?comp=goalstate",
                                  headers={"x-ms-version": "2012-11-30"}, timeout=10).text
        assert "<Incarnation>2</Incarnation>" in goal_state
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_serve_refuses_a_control_channel_off_loopback() -> None:
    done = subprocess.run([sys.executable, "-m", "fabric.cli", "serve", "default", "--control", "192.0.2.1:8081"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "not a loopback address" in done.stderr
