"""The committed OpenAPI document is what tools/genopenapi.py generates from the .proto (needs Go)."""

from __future__ import annotations

from pathlib import Path

from tools.genopenapi import DEFAULT_OUTPUT, generate

ROOT = Path(__file__).resolve().parent.parent


def test_openapi_document_matches_proto(tmp_path: Path) -> None:
    """Regenerating the document changes nothing; run `make openapi` and commit if this fails."""
    fresh = generate(tmp_path / "entitlements.v1.yaml").read_text()
    assert fresh == DEFAULT_OUTPUT.read_text(), "openapi/entitlements.v1.yaml is out of date: run `make openapi`"


def test_service_serves_the_committed_document() -> None:
    """server/http_api/openapi.yaml, which the service serves, is the committed document itself."""
    served = ROOT / "server" / "http_api" / "openapi.yaml"
    assert served.is_symlink()
    assert served.resolve() == DEFAULT_OUTPUT.resolve()
