"""Fault tests: a real fleet under kill -9, SIGSTOP, broker restarts and garbage records."""
