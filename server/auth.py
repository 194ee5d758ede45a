"""API keys: who may call which RPC.

Keys are configured as SHA-256 hashes, never in clear: one entry per line (or separated by `;`) in the form
`name:sha256-hex:scope[,scope...][:projects]`, for example `matchmaker:9f86d0...:read:308077`. `projects` is `*`
(every project the service serves, also when it is left out, as in entries written before projects existed) or a
comma list of project ids; a key used on another project is refused (`server.validation.resolve_project`).
`python -m server hash-key` makes a new random key and prints its entry. A caller sends the clear key as
`authorization: Bearer <key>` metadata.

Scopes: `read` (the read RPCs), `write` (Grant, Revoke), `console` (logging in to the support console,
`server.console`, and reading there; its actions need `write` too). A key with `console` alone calls no RPC.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from core.projects import project_id_problem

READ, WRITE, CONSOLE = "read", "write", "console"
SCOPES = frozenset({READ, WRITE, CONSOLE})
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


ALL_PROJECTS = "*"


@dataclass(frozen=True)
class ApiKey:
    """A configured key: its name (logged and written to the audit ledger), hash, scopes, and the projects it may
    be used on (None: every project the service serves)."""

    name: str
    sha256: str
    scopes: frozenset[str]
    projects: frozenset[int] | None = None


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one RPC.

    Attributes:
        name: the key's name.
        scopes: what it may do.
        projects: the projects it may act on; None for every project the service serves.
    """

    name: str
    scopes: frozenset[str]
    projects: frozenset[int] | None = None

    def may_use(self, project_id: int) -> bool:
        """Whether the caller is bound to `project_id`."""
        return self.projects is None or project_id in self.projects

    @property
    def single_project(self) -> int | None:
        """The one project the caller is bound to; None when it is bound to several or to all."""
        if self.projects is not None and len(self.projects) == 1:
            return next(iter(self.projects))
        return None


DEV_PRINCIPAL = Principal(name="insecure-dev", scopes=SCOPES)


def hash_key(key: str) -> str:
    """Returns the hex SHA-256 of a clear API key, as configured."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_projects(text: str) -> frozenset[int] | None:
    """Parses the projects of a key entry: `*` (None: every project) or a comma list of project ids.

    Raises:
        ValueError: the list is empty or an id is not a positive 63-bit integer; the message follows the word
            "projects".
    """
    text = text.strip()
    if text == ALL_PROJECTS:
        return None
    found: set[int] = set()
    for item in text.split(","):
        item = item.strip()
        if not item.isascii() or not item.isdigit():
            # The text is not echoed: a misplaced clear key or hash would end up in the logs.
            raise ValueError(f"must be {ALL_PROJECTS} or a comma list of project ids (digits)")
        project_id = int(item)
        problem = project_id_problem(project_id)
        if problem is not None:
            raise ValueError(f"project id {problem}")
        found.add(project_id)
    return frozenset(found)


def parse_api_keys(text: str) -> tuple[ApiKey, ...]:
    """Parses key entries; raises ValueError naming the bad entry (without echoing a hash)."""
    keys: list[ApiKey] = []
    seen_names: set[str] = set()
    seen_hashes: set[str] = set()
    for number, raw in enumerate(re.split(r"[;\n]", text), start=1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        parts = entry.split(":")
        if len(parts) not in (3, 4):
            raise ValueError(f"entry {number} is not name:sha256-hex:scopes[:projects]")
        name, digest, scope_text = (p.strip() for p in parts[:3])
        digest = digest.lower()
        if not _NAME.match(name):
            raise ValueError(f"entry {number}: name must be 1-64 of A-Z a-z 0-9 _ . @ -")
        if not _HEX64.match(digest):
            raise ValueError(f"entry {number} ({name}): the hash must be 64 hex characters (SHA-256)")
        scopes = frozenset(s.strip() for s in scope_text.split(",") if s.strip())
        if not scopes or not scopes <= SCOPES:
            raise ValueError(f"entry {number} ({name}): scopes must be a comma list of {sorted(SCOPES)}")
        projects = None
        if len(parts) == 4:
            try:
                projects = parse_projects(parts[3])
            except ValueError as exc:
                raise ValueError(f"entry {number} ({name}): projects {exc}") from None
        if name in seen_names or digest in seen_hashes:
            raise ValueError(f"entry {number} ({name}): duplicate name or key")
        seen_names.add(name)
        seen_hashes.add(digest)
        keys.append(ApiKey(name=name, sha256=digest, scopes=scopes, projects=projects))
    return tuple(keys)


class Authenticator:
    """Maps the `authorization` metadata of a call to a Principal.

    With no keys (insecure development mode only), every caller is the development principal, with every scope on
    every project.
    """

    def __init__(self, keys: Iterable[ApiKey], *, insecure_dev_mode: bool = False) -> None:
        self._by_hash: Mapping[str, ApiKey] = {k.sha256: k for k in keys}
        self._open = insecure_dev_mode and not self._by_hash
        # Clear key -> principal, for keys already verified: saves a SHA-256 per call. Only configured keys get
        # in, so its size is bounded by the number of keys.
        self._verified: dict[str, Principal] = {}

    def authenticate(self, authorization: str | None) -> Principal | None:
        """Returns the caller, or None when the header is missing, malformed or names no configured key."""
        if self._open:
            return DEV_PRINCIPAL
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        principal = self._verified.get(token)
        if principal is not None:
            return principal
        digest = hash_key(token)
        # The lookup is by hash, so timing reveals nothing about the clear key; compare_digest guards the
        # final equality anyway.
        key = self._by_hash.get(digest)
        if key is None or not hmac.compare_digest(key.sha256, digest):
            return None
        principal = self._verified[token] = Principal(key.name, key.scopes, key.projects)
        return principal
