"""The HTML graph of the default graph in headless Chromium: every task is a node, and
clicking one shows its doc. The page is one file that fetches nothing; Chromium runs
with networking off and a fresh profile. A screenshot stays in the test's tmp_path."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import need_tools
from tests.sandbox import make_sandbox_root

BIN = Path(sys.executable).parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-quic", "--disable-default-apps", "--disable-extensions",
                  "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1600,1000"]

# Clicks every node the way a person would and writes what the details panel showed.
CLICK_ALL = """<script>
const seen = [];
document.querySelectorAll("g.node").forEach(g => {
  g.dispatchEvent(new MouseEvent("click", {bubbles: true, cancelable: true}));
  seen.push({id: g.id, name: document.querySelector("#details h2").textContent,
             doc: document.querySelector("#details .doc").textContent});
});
const pre = document.createElement("pre");
pre.id = "clicked"; pre.textContent = JSON.stringify(seen); document.body.appendChild(pre);
</script>"""
CLICK_ONE = """<script>
document.getElementById("%s").dispatchEvent(new MouseEvent("click", {bubbles: true}));
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    pytest.skip("missing tools: chromium (Debian package chromium)")


def browse(page: Path, profile: Path, *action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *action,
                           page.as_uri()], capture_output=True, text=True, timeout=120,
                          check=False)


def with_script(page: Path, script: str, name: str) -> Path:
    copy = page.with_name(name)
    copy.write_text(page.read_text().replace("</body>", script + "</body>"))
    return copy


def test_html_graph_of_the_default_graph_in_chromium(tmp_path: Path) -> None:
    need_tools("dot")
    chromium()
    root = make_sandbox_root(tmp_path / "vm", "d0a2ab11-8a6c-4a5a-9c8c-4cf3d5c2f7a1")
    page = tmp_path / "graph.html"
    out = subprocess.run([str(BIN / "waagent"), "graph", "--format", "html", "--output",
                          str(page), f"root={root}"], capture_output=True, text=True,
                         timeout=120, check=False, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    listing = subprocess.run([str(BIN / "waagent"), "graph", "--format", "json", "--no-status",
                              f"root={root}"], capture_output=True, text=True, timeout=120,
                             check=False, cwd=tmp_path)
    tasks = {t["name"]: t for t in json.loads(listing.stdout)["tasks"]}
    assert "provision" in tasks

    text = page.read_text()
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", text), "nothing is fetched"
    assert not re.search(r"""(src|href)=["']https?:""", text)

    clicked_page = with_script(page, CLICK_ALL, "graph-click-all.html")
    dom = browse(clicked_page, tmp_path / "profile-1", "--virtual-time-budget=5000",
                 "--dump-dom")
    found = re.search(r'<pre id="clicked">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stderr[-2000:]
    seen = {entry["name"]: entry for entry in json.loads(html.unescape(found.group(1)))}
    assert set(seen) == set(tasks), "every task is a node"
    for name, task in tasks.items():
        assert seen[name]["doc"] == (task["doc"] or "(no doc)"), name

    first = sorted(e["id"] for n, e in seen.items() if ":" in n)[0]
    shot_page = with_script(page, CLICK_ONE % first, "graph-screenshot.html")
    shot = tmp_path / "graph.png"
    browse(shot_page, tmp_path / "profile-2", "--virtual-time-budget=5000",
           f"--screenshot={shot}")
    assert shot.exists() and shot.stat().st_size > 10_000, "screenshot kept in tmp_path"
