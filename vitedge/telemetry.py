"""OpenVINO and NNCF usage telemetry: off in vitedge unless the user turns it on.

OpenVINO tools and NNCF send anonymous usage data through `openvino_telemetry` (Google
Analytics) and write a client id under ~/intel when the user never decided. Their documented
opt-out is a declined consent (`opt_in_out --opt_out`, which writes ~/intel/openvino_telemetry).
vitedge applies that same decision to its own process only, before OpenVINO or NNCF is
imported, and writes nothing to the user's home. `VITEDGE_TELEMETRY=1` leaves the choice to
OpenVINO's own consent file again.
"""

from __future__ import annotations

import os

ENV_VAR = "VITEDGE_TELEMETRY"


def telemetry_allowed() -> bool:
    """Whether the user asked vitedge to leave OpenVINO/NNCF telemetry to their own settings."""
    return os.environ.get(ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on")


def decline_vendor_telemetry() -> bool:
    """Make this process answer 'declined' to OpenVINO/NNCF's consent check; True when applied."""
    if telemetry_allowed():
        return False
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:  # no openvino_telemetry: nothing is sent anyway
        return False

    def declined(self: OptInChecker, *args: object, **kwargs: object) -> ConsentCheckResult:
        return ConsentCheckResult.DECLINED

    OptInChecker.check = declined  # type: ignore[method-assign]
    return True
