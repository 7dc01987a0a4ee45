"""Unit tests of server.domain.pseudonym: the key file and the mapping."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from server.domain.pseudonym import Pseudonymizer, PseudonymKeyError


def keyfile(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "keys"
    p.write_text(text)
    p.chmod(0o600)
    return p


def test_pseudonyms_are_keyed_versioned_stable_and_distinct(tmp_path: Path) -> None:
    k1, k2 = secrets.token_hex(32), secrets.token_hex(32)
    one = Pseudonymizer.load(keyfile(tmp_path, f"# comment\nv1:{k1}\n"))
    two = Pseudonymizer.load(keyfile(tmp_path, f"v1:{k1}\nv2:{k2}  # rotated\n"))
    a = one.map("alice")
    assert a.startswith("v1_") and len(a) == 35 and "alice" not in a
    assert a == Pseudonymizer.load(keyfile(tmp_path, f"v1:{k1}\n")).map("alice")  # another process: same
    assert one.map("bob") != a
    assert two.map("alice").startswith("v2_") and two.map("alice") != a  # rotation: new pseudonyms
    assert two.all("alice") == [a, two.map("alice")]  # erasure covers the retired key too
    other_key = Pseudonymizer.load(keyfile(tmp_path, f"v1:{secrets.token_hex(32)}\n"))
    assert other_key.map("alice") != a  # without the key, ids cannot be recomputed
    assert one.map("") == ""  # empty stays empty, so validation still names user_id


def test_without_a_key_file_ids_are_stored_as_sent() -> None:
    ids = Pseudonymizer.load(None)
    assert not ids.enabled and ids.map("alice") == "alice" and ids.all("alice") == ["alice"]


@pytest.mark.parametrize("text, message", [
    ("", "holds no key"),
    ("v1\n", "line 1: expected VERSION:HEX_SECRET"),
    ("V1:" + "00" * 32, "line 1: expected VERSION:HEX_SECRET"),
    ("v1:xyz\n", "line 1: the secret is not hex"),
    ("v1:" + "00" * 16, "at least 32 bytes"),
    (f"v1:{'00' * 32}\nv1:{'11' * 32}\n", "line 2: version 'v1' appears twice"),
])
def test_bad_key_files_are_refused_naming_the_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PseudonymKeyError, match=message) as info:
        Pseudonymizer.load(keyfile(tmp_path, text))
    assert "00" * 16 not in str(info.value)  # the secret never appears in the message


def test_missing_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PseudonymKeyError, match="cannot read"):
        Pseudonymizer.load(tmp_path / "absent")
