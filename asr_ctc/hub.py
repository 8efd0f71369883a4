"""Whether the HuggingFace hub can be reached, found out once per process before anything asks it for a file.

Without network access, every file huggingface_hub looks up on the hub is retried five times with backoff
(about 30 s, with a warning line per try) before the one error that matters. Here one quick connection
attempt to the hub's endpoint (or the proxy in between) answers the question instead; when it fails, the
libraries are switched to offline mode, so that a checkpoint already in the local cache still loads at once
and a missing one fails at once, with one error naming the reason.
"""

from __future__ import annotations

import functools
import socket
import sys
import urllib.request
from urllib.parse import urlsplit

# Long enough for a slow but working network; short next to the ~30 s of retries it replaces.
PROBE_TIMEOUT_S = 3.0


@functools.cache
def hub_offline_reason() -> str | None:
    """Why the hub cannot be used, or None when its endpoint accepts a connection.

    ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set is a reason by itself. Otherwise the endpoint
    (``HF_ENDPOINT``, default https://huggingface.co), or the HTTP(S) proxy configured for it, must accept
    a TCP connection within :data:`PROBE_TIMEOUT_S`. Cached: the answer holds for the process.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = urlsplit(constants.ENDPOINT)
    proxy = urllib.request.getproxies().get(endpoint.scheme)
    target = urlsplit(proxy) if proxy else endpoint
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        with socket.create_connection((target.hostname or "", port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        via = f" (via the proxy {target.hostname}:{port})" if target is not endpoint else ""
        return f"{constants.ENDPOINT}{via} cannot be reached: {exc}"


def use_offline_mode_if_unreachable() -> str | None:
    """Switch huggingface_hub (and so transformers) and datasets to offline mode when the hub cannot be
    reached; return the reason, or None when it can."""
    reason = hub_offline_reason()
    if reason is not None:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True  # read at each call by huggingface_hub and transformers
        datasets_config = sys.modules.get("datasets.config")
        if datasets_config is not None:
            datasets_config.HF_HUB_OFFLINE = True
    return reason
