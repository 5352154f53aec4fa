"""`manifest.json`: the last file written into a version; it lists every other file with size and checksum.

    {"format": 1, "experiment": str, "trial": str, "model": str, "version": int, "created": unix seconds,
     "checksum": "xxh3_128", "files": {relative path: {"size": int, "checksum": hex}},
     "aliases": {tied tensor name: stored tensor name}, "metadata": {caller's JSON object}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zrl.paramdb.errors import CorruptVersionError
from zrl.paramdb.safetensors_io import CHECKSUM_NAME, FileRecord

MANIFEST = "manifest.json"
FORMAT = 1


@dataclass(frozen=True)
class Manifest:
    """What a version holds, as recorded when it was pushed."""

    experiment: str
    trial: str
    model: str
    version: int
    created: float
    files: dict[str, FileRecord]
    aliases: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT, "experiment": self.experiment, "trial": self.trial, "model": self.model,
            "version": self.version, "created": self.created, "checksum": CHECKSUM_NAME,
            "files": {name: {"size": rec.size, "checksum": rec.checksum} for name, rec in sorted(self.files.items())},
            "aliases": self.aliases, "metadata": self.metadata,
        }, indent=1)


def read_manifest(version_dir: Path) -> Manifest:
    """Parse `version_dir/manifest.json`; FileNotFoundError when the version directory itself is gone."""
    path = version_dir / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        if version_dir.is_dir():
            raise CorruptVersionError(f"{path}: manifest is missing", str(path)) from None
        raise
    try:
        raw = json.loads(text)
        if raw.get("format") != FORMAT or raw.get("checksum") != CHECKSUM_NAME:
            raise ValueError(f"unsupported format {raw.get('format')!r} / checksum {raw.get('checksum')!r}")
        files = {name: FileRecord(int(rec["size"]), str(rec["checksum"])) for name, rec in raw["files"].items()}
        for name in files:
            if name.startswith("/") or ".." in Path(name).parts:
                raise ValueError(f"file entry {name!r} points outside the version directory")
        return Manifest(experiment=raw["experiment"], trial=raw["trial"], model=raw["model"],
                        version=int(raw["version"]), created=float(raw["created"]), files=files,
                        aliases=dict(raw.get("aliases", {})), metadata=dict(raw.get("metadata", {})))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CorruptVersionError(f"{path}: malformed manifest ({err})", str(path)) from err
