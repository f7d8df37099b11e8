"""graph.doit_private: doit loads without importlib.metadata, multiprocessing, configparser,
pdb, pprint, pickle, queue, dbm and gettext, and nothing else notices."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from graph import doit_private

REPO = Path(__file__).resolve().parents[2]


def run_fresh(code: str) -> str:
    """Run code in a new interpreter (the stand-in only matters before doit is imported)."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                            capture_output=True, text=True, check=True)
    return result.stdout.strip()


def test_the_agent_loads_doit_without_importlib_metadata() -> None:
    out = run_fresh("""
        import sys
        import graph.main
        print("doit.plugin" in sys.modules, "importlib.metadata" in sys.modules,
              "multiprocessing" in sys.modules)
    """)
    assert out == "True False False"


def test_the_agent_loads_doit_without_its_config_reader_debugger_and_printer() -> None:
    out = run_fresh("""
        import sys
        import graph.main
        print([name for name in ("configparser", "pdb", "pprint", "pickle", "dbm", "gettext",
                                 "queue") if name in sys.modules])
    """)
    assert out == "[]"


def test_a_later_import_gets_the_real_module() -> None:
    out = run_fresh("""
        import graph.main
        import importlib.metadata
        print(importlib.metadata.version("doit") != "", hasattr(importlib.metadata, "files"))
    """)
    assert out == "True True"


def test_doits_entry_point_function_reaches_the_real_one() -> None:
    out = run_fresh("""
        import graph.main
        from doit import plugin
        found = plugin.entry_points(group="console_scripts")
        print(any(ep.name == "doit" for ep in found))
    """)
    assert out == "True"


def test_doits_parallel_runner_still_gets_real_processes_and_queues() -> None:
    out = run_fresh("""
        import graph.main
        from doit import runner
        queue = runner.MQueue()
        child = runner.MRunner.Child(target=queue.put, args=("from the child",))
        child.start()
        child.join()
        import multiprocessing
        print(queue.get(timeout=10), runner.MRunner.available(),
              hasattr(multiprocessing, "cpu_count"))
    """)
    assert out == "from the child True True"


def test_doits_config_reader_debugger_and_printer_reach_the_real_ones() -> None:
    out = run_fresh("""
        import graph.main
        import configparser
        from doit import action, cmd_dumpdb, cmd_info
        from doit.doit_cmd import DoitConfig
        parser = DoitConfig.load_config_ini([])
        debugger = action.pdb.Pdb()
        printer = cmd_info.pprint.PrettyPrinter(indent=4)
        print(isinstance(parser, configparser.ConfigParser), type(debugger).__module__,
              type(printer).__module__, cmd_dumpdb.pprint.pformat({"a": 1}))
    """)
    assert out == "True pdb pprint {'a': 1}"


def test_doits_threaded_runner_still_gets_real_queues() -> None:
    out = run_fresh("""
        import graph.main
        import queue
        from doit import runner
        made = runner.MThreadRunner.Queue()
        made.put("queued")
        print(type(made) is queue.Queue, made.get(timeout=10))
    """)
    assert out == "True queued"


def test_doits_pickling_dbm_and_getopts_messages_reach_the_real_ones() -> None:
    out = run_fresh("""
        import graph.main
        import getopt
        import pickle
        from doit import cmd_dumpdb, dependency, runner
        try:
            getopt.getopt(["--nope"], "", ["yes"])
        except getopt.GetoptError as err:
            message = err.msg
        print(pickle.loads(runner.pickle_dumps([1])) == [1],
              runner.pickle.PicklingError is pickle.PicklingError,
              cmd_dumpdb.whichdb("/nonexistent/db"), isinstance(dependency.dbm.error, tuple),
              message)
    """)
    assert out == "True True None True option --nope not recognized"


def test_a_stand_in_gives_the_real_modules_other_names_once_doit_is_loaded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stand_in = doit_private._stand_in("colorsys", ("rgb_to_hsv",))
    monkeypatch.setitem(sys.modules, "colorsys", stand_in)
    with pytest.raises(AttributeError, match=r"colorsys.hls_to_rgb .*DEFERRED"):
        stand_in.hls_to_rgb  # noqa: B018 - what doit would do while it loads
    monkeypatch.delitem(sys.modules, "colorsys")
    import colorsys

    assert stand_in.hls_to_rgb is colorsys.hls_to_rgb
    assert stand_in.rgb_to_hsv(1.0, 0.0, 0.0) == colorsys.rgb_to_hsv(1.0, 0.0, 0.0)
