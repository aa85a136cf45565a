"""`vitedge.json`: what an artifact is, where it came from, and the hash of every file in it."""

from __future__ import annotations

import datetime as _dt
import functools
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from vitedge.errors import BadInput, IncompatibleArtifact
from vitedge.fsutil import sha256_file, write_json_atomic
from vitedge.preprocessing import Preprocessing

MANIFEST_NAME = "vitedge.json"
# What every report and `inspect` say of an artifact whose weights were a seeded random init.
RANDOM_WEIGHTS_NOTE = "random weights: accuracy figures are meaningless"
SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")
MAX_MANIFEST_BYTES = 16 << 20
# Keys of manifest["artifact"] that name a file of the artifact (the backends' main files).
ARTIFACT_FILE_KEYS = ("model", "weights_file", "onnx")


@dataclass(frozen=True)
class Provenance:
    """Where an artifact came from (see `Manifest.provenance`)."""

    spec: str | None
    weights: str | None
    weights_sha256: str | None
    export_dir: str | None
    export_model_sha256: str | None
    calibration_hash: str | None


class Manifest(dict):
    """A dict with the few helpers every artifact needs; the JSON is the contract."""

    @classmethod
    def new(cls, kind: str, **fields: Any) -> "Manifest":
        from vitedge._version import __version__

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
        if artifact_dir.is_file():
            raise BadInput(f"{artifact_dir} is a file; an artifact directory (holding {MANIFEST_NAME}) is expected")
        if not path.is_file():
            raise BadInput(
                f"{artifact_dir} has no {MANIFEST_NAME}: give a directory written by "
                "`vitedge export` or `vitedge compile`"
            )
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise IncompatibleArtifact(f"{path} is {path.stat().st_size / 1e6:.0f} MB, not a vitedge manifest")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadInput(f"{path} is not valid JSON ({exc}); re-run the step that wrote it") from exc
        if not isinstance(data, dict) or "schema_version" not in data:
            raise BadInput(f"{path} is not a vitedge manifest")
        if isinstance(data["schema_version"], int) and data["schema_version"] > SCHEMA_VERSION:
            raise IncompatibleArtifact(
                f"{path} has manifest schema {data['schema_version']}, this vitedge reads "
                f"up to {SCHEMA_VERSION}: upgrade vitedge"
            )
        validate_manifest(data, path)
        manifest = cls(data)
        manifest.check_confined(artifact_dir)
        return manifest

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self["preprocessing"])

    @property
    def labels(self) -> list[str] | None:
        return self.get("labels")

    # -- typed read-only views: each rule about the JSON is computed here, once ---------------

    @property
    def is_export(self) -> bool:
        """An export dir (`vitedge export`), as opposed to a compiled artifact."""
        return self.get("kind") == "export"

    @property
    def target(self) -> str:
        """The target that runs it; an export dir is "onnx" (ONNX Runtime FP32)."""
        return str(self.get("target") or "onnx")

    @property
    def precision(self) -> str:
        return str(self.get("precision") or "fp32")

    @property
    def fixed_batch(self) -> int | None:
        """The batch size a static-batch export was made with; None for a dynamic batch."""
        onnx = self.get("onnx", {})
        if onnx.get("dynamic_batch", True):
            return None
        return int(onnx.get("batch") or self["io"]["inputs"][0]["shape"][0])

    @property
    def runtime(self) -> dict[str, Any]:
        """What the backend applies at load (threads, properties, providers...); {} if none."""
        return dict(self.get("runtime") or {})

    @property
    def provenance(self) -> "Provenance":
        """Where the artifact came from: model spec, weights, export and calibration."""
        source, export = self.get("source", {}), self.get("export") or {}
        calibration = self.get("calibration") or {}
        return Provenance(spec=source.get("spec"), weights=source.get("weights"),
                          weights_sha256=source.get("weights_sha256"), export_dir=export.get("dir"),
                          export_model_sha256=export.get("model_sha256"),
                          calibration_hash=calibration.get("content_hash"))

    @property
    def incomplete(self) -> dict[str, str] | None:
        """{"reason", "next_step"} when the backend could not build everything here."""
        return self.get("incomplete")

    def artifact_file(self, key: str = "model") -> str:
        """The name of the artifact's KEY file (its main model by default)."""
        return (self.get("artifact") or {}).get(key) or self.get("onnx", {}).get("file", "model.onnx")

    def save(self, artifact_dir: str | Path) -> None:
        """Hash every file in the dir (but the manifest itself) and write the manifest."""
        artifact_dir = Path(artifact_dir)
        self["files"] = hash_dir(artifact_dir)
        write_json_atomic(artifact_dir / MANIFEST_NAME, dict(self))

    def used_files(self) -> list[str]:
        """The files this artifact's manifest names as its own (model, weights, ONNX)."""
        used = [self["artifact"][k] for k in ARTIFACT_FILE_KEYS if isinstance(self.get("artifact", {}).get(k), str)]
        if self.get("kind") == "export" and isinstance(self.get("onnx", {}).get("file"), str):
            used.append(self["onnx"]["file"])
        return used

    def check_confined(self, artifact_dir: str | Path) -> None:
        """Refuse a manifest whose paths leave ARTIFACT_DIR (`..`, absolute paths, symlinks out)
        or that names a file its `files` hashes do not cover (which would go unchecked)."""
        root = Path(artifact_dir).resolve()
        files = self.get("files", {})
        where = f"{artifact_dir}/{MANIFEST_NAME}"
        for name in [*files, *self.used_files()]:
            if not _is_relative_normal(name):
                raise IncompatibleArtifact(f"{where} names {name!r}, a path that is not relative and inside the "
                                           "artifact dir; refusing it (re-run the step that wrote this artifact)")
            resolved = (root / name).resolve()
            if root not in resolved.parents:
                raise IncompatibleArtifact(f"{where}: {name} is a symlink leading out of the artifact dir "
                                           f"(to {resolved}); refusing it")
        incomplete_engine = self["artifact"].get("model") if "incomplete" in self and "artifact" in self else None
        uncovered = [n for n in self.used_files() if n not in files and n != incomplete_engine]
        if uncovered:
            raise IncompatibleArtifact(f"{where}: {', '.join(uncovered)} is used but has no SHA-256 in `files`, "
                                       "so it could not be verified; re-run the step that wrote this artifact")

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


def _is_relative_normal(name: str) -> bool:
    path = PurePosixPath(name)
    return (bool(name) and "\\" not in name and not path.is_absolute() and not name.startswith("~")
            and path.as_posix() == name and all(part not in (".", "..") for part in path.parts))


@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The JSON Schema vitedge.json follows (shipped as vitedge/manifest.schema.json)."""
    return json.loads(SCHEMA_PATH.read_text())


def validate_manifest(data: dict[str, Any], path: Path) -> None:
    """IncompatibleArtifact, naming the key, when DATA does not follow the manifest schema."""
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(load_schema()).iter_errors(data))
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise IncompatibleArtifact(f"{path} does not follow the vitedge manifest schema: {key}: "
                                   f"{_explain_schema_error(error)}; re-run the step that wrote this artifact")


def _explain_schema_error(error: Any) -> str:
    """ERROR in words: a path that leaves the artifact dir says so, not the schema's regex."""
    if error.validator == "pattern" and isinstance(error.instance, str) \
            and "artifact dir" in error.schema.get("description", ""):
        text = error.instance
        why = ("is an absolute path" if text.startswith("/") else
               "starts with ~ (a home directory)" if text.startswith("~") else
               "has a .. part, which leads out of the artifact dir" if ".." in text.split("/") else
               "has a . part or an empty part (//)" if "." in text.split("/") or "//" in text else
               "has a backslash" if "\\" in text else "is not a plain relative path")
        return f"{text[:120]!r} {why}; every path a manifest names must be a relative path inside the artifact dir"
    return error.message[:200]


def hash_dir(artifact_dir: Path) -> dict[str, str]:
    files = {}
    for path in sorted(artifact_dir.rglob("*")):
        if path.is_file() and path.name != MANIFEST_NAME and not path.name.startswith("."):
            files[path.relative_to(artifact_dir).as_posix()] = sha256_file(path)
    return files
