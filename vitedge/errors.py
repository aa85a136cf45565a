"""One small error family. Each error knows its exit code; the CLI prints its message once."""

from __future__ import annotations


class VitedgeError(Exception):
    """Base error: the message says what went wrong and what to do about it."""

    exit_code = 4


class GateError(VitedgeError):
    """A run that finished but whose gates did not all pass. RESULT is what it produced (a bench
    report, a tune result), for the caller to show or read."""

    def __init__(self, message: str, result: dict | None = None) -> None:
        super().__init__(message)
        self.result = result


class GateFailed(GateError):
    """One or more bench gates failed."""

    exit_code = 1


class BadInput(VitedgeError):
    """The user gave something we cannot use (a path, a flag value, a model spec)."""

    exit_code = 2


class IncompatibleArtifact(BadInput):
    """An artifact whose hashes, versions or hardware do not match what it was built for."""

    exit_code = 2


class EnvironmentProblem(VitedgeError):
    """A backend or dependency is missing or unusable on this machine."""

    exit_code = 3


class ArtifactIncomplete(EnvironmentProblem):
    """The artifact was written but cannot be finished here (a TensorRT engine without TensorRT):
    MANIFEST says what is there and the next step, for the caller to show."""

    def __init__(self, message: str, manifest: dict, out_dir: object) -> None:
        super().__init__(message)
        self.manifest, self.out_dir = manifest, out_dir


class ExportFailed(VitedgeError):
    """torch -> ONNX conversion or its parity check failed."""

    exit_code = 4


class CompileFailed(VitedgeError):
    """A backend build failed."""

    exit_code = 4


class GateUnreliable(GateError):
    """No gate failed, but a speed gate could not be decided: its confidence interval straddles
    the bound or other processes loaded the CPU while bench timed. CI may retry."""

    exit_code = 5


def brief(exc: BaseException, limit: int = 300) -> str:
    """A third-party error's text in one line: the line that says what is wrong, without the
    C++ source locations and check expressions OpenVINO and ONNX Runtime put around it (the
    full text is the cause of the error raised, shown with --debug)."""
    import re

    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    noise = re.compile(r"^(Exception from |Check '.*' failed at |\[ ?ONNXRuntimeError ?\] : \d+ : \w+ : $)|"
                       r"^(?:src|/)\S+\.(?:cpp|cc|h|hpp)(?::\d+)*:?$")
    useful = [line for line in lines if not noise.match(line)] or lines
    text = useful[-1] if useful else type(exc).__name__
    text = re.sub(r"\s*(?:\S+/)?\S+\.(?:cpp|cc|hpp|h):\d+:?\s*", " ", text).strip(" :") or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
