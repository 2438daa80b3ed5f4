"""Fixtures shared by test files in different folders."""

import pathlib

import pytest


def _flip_a_byte_of_every_file(directory: pathlib.Path) -> list[pathlib.Path]:
    """Inverts the middle byte of every file under ``directory``; returns the files."""
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    assert files, f"nothing to damage under {directory}"
    for path in files:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    return files


@pytest.fixture
def damage():
    """``damage(directory)``: flips a byte in each file under it, like a failing disk."""
    return _flip_a_byte_of_every_file
