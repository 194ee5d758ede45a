"""The one Lua loader: every script is read from a package's `lua/` folder and registered on a client.

A script may be several files joined in order (shared helpers first), so one atomic script can reuse the same
Lua functions as another without a second round trip.
"""

from __future__ import annotations

from importlib import resources

from redis.commands.core import AsyncScript

from core.connections import RedisClient


def lua_source(package: str, *names: str) -> str:
    """The text of `names` (files of `<package>/lua/`) joined by newlines."""
    folder = resources.files(package) / "lua"
    return "\n".join((folder / name).read_text() for name in names)


def register(redis: RedisClient, package: str, *names: str) -> AsyncScript:
    """Registers the script made of `names` on `redis` (EVALSHA, with EVAL when the server does not know it)."""
    return redis.register_script(lua_source(package, *names))
