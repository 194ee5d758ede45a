"""The committed stubs are what `make proto` generates from the .proto files."""

from __future__ import annotations

from pathlib import Path

from tools.genproto import generate

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_match_proto(tmp_path: Path) -> None:
    """Regenerating the stubs changes nothing; run `make proto` and commit if this fails."""
    written = generate(tmp_path)
    assert written
    stale = [
        str(path.relative_to(tmp_path))
        for path in written
        if path.read_bytes() != (ROOT / "clients" / "python" / path.relative_to(tmp_path)).read_bytes()
    ]
    assert not stale, f"stubs out of date with proto/: {stale}; run `make proto`"
