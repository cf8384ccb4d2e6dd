"""The outcome of a decision, shown once on the next page: a one-shot cookie.

The POST that makes a decision answers with a redirect that sets the cookie (HttpOnly,
SameSite=Strict, signed for the session that decided, under the console's per-process secret);
the next page a person sees shows it and clears it, so a reload does not show it again and a
crafted link or cookie cannot put words on the page. ``item`` names the review item decided, so
the run's page can show the outcome in the item's place.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from starlette.requests import HTTPConnection
from starlette.responses import Response

from guardrail.web.security import Authority, Principal

FLASH_COOKIE = "guardrail_flash"
KINDS = ("ok", "warn", "error")
MAX_MESSAGE_BYTES = 2400  # base64 and the signature keep the cookie under browsers' 4 kB


@dataclass(frozen=True, slots=True)
class Flash:
    kind: str  # ok (it landed) | warn (nothing changed) | error (not done)
    message: str
    item: str = ""  # the review item the decision was about, if any


def clip(message: str) -> str:
    data = message.encode()
    if len(data) <= MAX_MESSAGE_BYTES:
        return message
    return data[: MAX_MESSAGE_BYTES - 3].decode(errors="ignore") + "..."


def set_flash(
    response: Response, authority: Authority, principal: Principal, flash: Flash, secure: bool
) -> None:
    payload = json.dumps([flash.kind, clip(flash.message), flash.item], ensure_ascii=False)
    encoded = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
    signature = authority.sign("flash", principal, encoded)
    response.set_cookie(
        FLASH_COOKIE,
        f"{encoded}.{signature}",
        httponly=True,
        samesite="strict",
        secure=secure,
    )


def read_flash(conn: HTTPConnection, authority: Authority, principal: Principal) -> Flash | None:
    """The outcome waiting for this session, if the cookie holds one the console signed for
    it."""
    cookie = conn.cookies.get(FLASH_COOKIE, "")
    encoded, _, signature = cookie.partition(".")
    if not encoded or not authority.signed("flash", principal, encoded, signature):
        return None
    try:
        kind, message, item = json.loads(
            base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        )
    except (ValueError, TypeError, binascii.Error):
        return None
    if kind not in KINDS or not isinstance(message, str) or not isinstance(item, str):
        return None
    return Flash(kind, message, item)


def clear_flash(response: Response) -> None:
    response.delete_cookie(FLASH_COOKIE, httponly=True, samesite="strict")
