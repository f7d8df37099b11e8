"""The engine: task loading, doit commands, state, checks, the waagent command line."""
