"""The operator commands of `python -m server` that have grown past a few lines (`server/__main__.py` parses the
command line and dispatches):

- `context`: the store an operator command reaches (`operator_redis`) and the project it acts on (`command_project`);
- `reconcile`: one sweep of a project's orders at the provider now, and the sweeper's status.
"""

from server.commands.context import command_project, operator_redis

__all__ = ["command_project", "operator_redis"]
