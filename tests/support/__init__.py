"""Helpers shared by integration and e2e tests (real file systems, cached between runs)."""
