"""This agent's name and version: the one place that says them.

A package built for self-update (graph/agent_package.py) carries its own copy of this
file with its version written in, and the installer checks that it says the version
the manifest offered.
"""

AGENT_NAME = "waagent-graph"
AGENT_VERSION = "0.1.0"
