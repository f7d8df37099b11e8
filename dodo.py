"""doit entry point from a checkout: `doit list`, `doit provision root=/tmp/vm conf=FILE`.

The graph comes from the task areas in tasks/ through graph/loader.py, the same
code the installed `waagent` command uses.
"""

from graph.loader import dodo_namespace

globals().update(dodo_namespace())
