"""One HTTP POST to a webhook or FHIR receiver, its answer sorted into delivered,
retry later, or refused for good."""

from __future__ import annotations

import http.client
import ssl
import urllib.error
import urllib.request

from node.config import AlertReceiver
from node.alerts.outcome import AlertNotDelivered

# 4xx answers that say "not now" rather than "never": retried with backoff.
RETRIED_4XX = {408, 425, 429}


def post(receiver: AlertReceiver, body: bytes, headers: dict[str, str]) -> bytes:
    """The response body of a 2xx answer; otherwise AlertNotDelivered."""
    context = (ssl.create_default_context(cafile=receiver.ca_certificates or None)
               if receiver.url.startswith("https:") else None)
    request = urllib.request.Request(receiver.url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=receiver.timeout_s,
                                    context=context) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        permanent = 400 <= exc.code < 500 and exc.code not in RETRIED_4XX
        raise AlertNotDelivered(f"HTTP {exc.code} {exc.reason}", permanent=permanent) from None
    except urllib.error.URLError as exc:
        # Refused or unreachable: it never arrived. A timeout after sending: in doubt.
        raise AlertNotDelivered(f"unreachable: {exc.reason}",
                                answered=not isinstance(exc.reason, TimeoutError)) from None
    except (TimeoutError, http.client.HTTPException, OSError) as exc:
        raise AlertNotDelivered(f"no answer: {exc or type(exc).__name__}",
                                answered=False) from None
