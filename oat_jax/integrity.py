"""Content hashes of saved artifacts: written at save time, verified at load time.

`write_manifest(directory)` records the SHA-256 and size of every file under `directory` in
`<directory>/integrity.json`; `verify(directory)` recomputes them and raises `IntegrityError` naming the first file
that is missing, truncated or changed (a flipped bit in the params data, an edited config.json). Directories saved
before manifests existed have none and load unverified.
"""

from __future__ import annotations

import hashlib
import json
import os

MANIFEST_FILE = "integrity.json"
_CHUNK = 1 << 20


class IntegrityError(ValueError):
    """A saved file does not match the hash recorded when it was saved (damaged or edited)."""


def file_sha256(path: str) -> str:
    """Hex SHA-256 of the file at `path`."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(directory: str) -> list[str]:
    """Relative paths (with '/') of every file under `directory` except the manifest, sorted."""
    out = []
    for root, _, names in os.walk(directory):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/")
            if rel != MANIFEST_FILE:
                out.append(rel)
    return sorted(out)


def write_manifest(directory: str) -> str:
    """Writes `<directory>/integrity.json` = {"sha256": {relative path: hex}, "bytes": {relative path: size}}
    for every file under `directory`; returns the manifest's path."""
    files = _files(directory)
    manifest = {"format": 1, "sha256": {f: file_sha256(os.path.join(directory, f)) for f in files},
                "bytes": {f: os.path.getsize(os.path.join(directory, f)) for f in files}}
    path = os.path.join(directory, MANIFEST_FILE)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1)
    return path


def has_manifest(directory: str) -> bool:
    """True if `directory` carries an integrity manifest."""
    return os.path.isfile(os.path.join(directory, MANIFEST_FILE))


def verify(directory: str, what: str = "artifact") -> bool:
    """Checks every file listed in `<directory>/integrity.json`. Returns False when there is no manifest (an
    artifact saved before manifests existed), True when every file matches.

    Raises:
      IntegrityError: a listed file is missing, has another size, or another hash; or the manifest is unreadable.
        The message names the file and says what to do.
    """
    path = os.path.join(directory, MANIFEST_FILE)
    if not os.path.isfile(path):
        return False
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
        hashes, sizes = dict(manifest["sha256"]), dict(manifest.get("bytes", {}))
    except (ValueError, KeyError, TypeError) as e:
        raise IntegrityError(f"{path} is not a readable integrity manifest ({e}); the {what} is damaged: save it "
                             f"again, or load with verify=False at your own risk.") from e
    for rel, expected in hashes.items():
        file = os.path.join(directory, *rel.split("/"))
        if not os.path.isfile(file):
            raise IntegrityError(f"{file} is missing: the {what} at {directory} is incomplete (its {MANIFEST_FILE} "
                                 f"lists it). Save it again or restore the file from a copy.")
        size = os.path.getsize(file)
        if rel in sizes and size != sizes[rel]:
            raise IntegrityError(f"{file} has {size} bytes but {sizes[rel]} were saved: the file is truncated or "
                                 f"replaced. Save the {what} again or restore the file from a copy.")
        if file_sha256(file) != expected:
            raise IntegrityError(f"{file} does not match the SHA-256 recorded when the {what} was saved: it was "
                                 f"damaged or edited after saving. Save the {what} again or restore the file from a "
                                 f"copy (verify=False loads it anyway, at your own risk).")
    return True
