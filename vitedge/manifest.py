"""`vitedge.json`: what an artifact is, where it came from, and the hash of every file in it."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from vitedge.errors import BadInput, IncompatibleArtifact
from vitedge.fsutil import sha256_file, write_json_atomic
from vitedge.preprocessing import Preprocessing

MANIFEST_NAME = "vitedge.json"
SCHEMA_VERSION = 1


class Manifest(dict):
    """A dict with the few helpers every artifact needs; the JSON is the contract."""

    @classmethod
    def new(cls, kind: str, **fields: Any) -> "Manifest":
        from vitedge import __version__

        m = cls(
            schema_version=SCHEMA_VERSION,
            kind=kind,
            vitedge_version=__version__,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )
        m.update(fields)
        return m

    @classmethod
    def load(cls, artifact_dir: str | Path) -> "Manifest":
        artifact_dir = Path(artifact_dir)
        path = artifact_dir / MANIFEST_NAME
        if not artifact_dir.exists():
            raise BadInput(f"{artifact_dir} does not exist")
        if not path.is_file():
            raise BadInput(
                f"{artifact_dir} has no {MANIFEST_NAME}: give a directory written by "
                "`vitedge export` or `vitedge compile`"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise BadInput(f"{path} is not valid JSON ({exc}); re-run the step that wrote it") from exc
        if not isinstance(data, dict) or "schema_version" not in data:
            raise BadInput(f"{path} is not a vitedge manifest")
        if data["schema_version"] > SCHEMA_VERSION:
            raise IncompatibleArtifact(
                f"{path} has manifest schema {data['schema_version']}, this vitedge reads "
                f"up to {SCHEMA_VERSION}: upgrade vitedge"
            )
        return cls(data)

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self["preprocessing"])

    @property
    def labels(self) -> list[str] | None:
        return self.get("labels")

    def save(self, artifact_dir: str | Path) -> None:
        """Hash every file in the dir (but the manifest itself) and write the manifest."""
        artifact_dir = Path(artifact_dir)
        self["files"] = hash_dir(artifact_dir)
        write_json_atomic(artifact_dir / MANIFEST_NAME, dict(self))

    def verify_files(self, artifact_dir: str | Path) -> None:
        """Refuse an artifact whose files changed since it was written."""
        artifact_dir = Path(artifact_dir)
        recorded: dict[str, str] = self.get("files", {})
        for name, digest in recorded.items():
            path = artifact_dir / name
            if not path.is_file():
                raise IncompatibleArtifact(
                    f"{artifact_dir}: {name} is listed in {MANIFEST_NAME} but missing; "
                    "re-run the step that wrote this artifact"
                )
            if sha256_file(path) != digest:
                raise IncompatibleArtifact(
                    f"{artifact_dir}: {name} does not match its SHA-256 in {MANIFEST_NAME} "
                    "(modified or corrupt); re-run the step that wrote this artifact"
                )


def hash_dir(artifact_dir: Path) -> dict[str, str]:
    files = {}
    for path in sorted(artifact_dir.rglob("*")):
        if path.is_file() and path.name != MANIFEST_NAME and not path.name.startswith("."):
            files[path.relative_to(artifact_dir).as_posix()] = sha256_file(path)
    return files
