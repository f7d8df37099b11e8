"""The agent's run lock: one run at a time per Lib.Dir.

`waagent run` (graph/commands.py) holds it; deprovision (tasks/deprovision.py) keeps the
file while it empties Lib.Dir. A module of its own so that both name it without importing
doit.
"""

LOCK_FILE = "waagent-graph.lock"
