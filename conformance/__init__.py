"""The conformance suite: one set of scenarios (`scenarios.json`) that every client runs against a real stack.

`make test-clients` runs it (`pytest conformance`); PROTOCOL.md says how the harness drives each client's runner.
"""
