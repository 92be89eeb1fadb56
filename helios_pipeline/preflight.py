"""Checks made before anything renders, so bad input fails fast with exit code 2 and nothing written."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request

from helios_pipeline.engine.errors import RenderError
from helios_pipeline.network import read_deployment_policy
from helios_pipeline.spec import RenderSpec, SpecError

URL_TIMEOUT_SECONDS = 15


def check_composition_reachable(url: str) -> None:
    """Fetch ``url`` once; an unreachable host or an HTTP error is invalid input."""
    request = urllib.request.Request(url, method="GET", headers={"User-Agent": "helios-pipeline"})
    try:
        with urllib.request.urlopen(request, timeout=URL_TIMEOUT_SECONDS) as response:
            response.read(1)
    except urllib.error.HTTPError as exc:
        raise SpecError(url, [("composition", f"HTTP {exc.code} {exc.reason}")]) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SpecError(url, [("composition", f"unreachable: {reason}")]) from None
    except (http.client.HTTPException, ValueError) as exc:  # InvalidURL, a malformed response
        raise SpecError(url, [("composition", f"cannot load: {type(exc).__name__}: {exc}")]) from None


def check_inputs(spec: RenderSpec) -> None:
    """Everything about the input that can be known before a browser starts."""
    try:
        read_deployment_policy()
    except ValueError as exc:  # the deployment's setting, not the spec: every render would fail on it
        raise RenderError(str(exc)) from None
    if not spec.is_local:
        check_composition_reachable(spec.composition)
