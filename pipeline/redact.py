"""Credentials out of every message, log line, record and worker environment: the one place that knows them.

A URL may carry a secret in two places: its userinfo (``https://user:password@host/...``) and its query (a
presigned URL's ``X-Amz-Signature``/``X-Amz-Credential``/``X-Amz-Security-Token``, an Azure SAS ``sig``, an
``access_token``). ``redact`` rewrites both in any text (``***``); what remains still says which host and file
were meant. An environment variable is a credential by its name (``SECRET_MARKERS``) or by its value (a URL
that carries one, e.g. ``MLFLOW_TRACKING_URI=https://user:pass@host``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# variable names that hold credentials (AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, MLFLOW_TRACKING_PASSWORD, ...)
SECRET_MARKERS = ("SECRET", "TOKEN", "PASSWORD", "KEY", "SESSION", "CREDENTIAL", "AUTH")
# query parameters that hold credentials (matched lower-case, as substrings)
SECRET_QUERY = ("sig", "token", "key", "secret", "password", "credential", "auth", "session", "policy")
HIDDEN = "***"
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()\[\]{}]+")


def redact_url(url: str) -> str:
    """``url`` with its userinfo and secret-bearing query values replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not parseable as a URL: hide everything after the scheme
        return url.split("://", 1)[0] + "://" + HIDDEN
    netloc = parts.netloc
    if "@" in netloc:
        netloc = HIDDEN + "@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        hidden = [(k, HIDDEN if any(s in k.lower() for s in SECRET_QUERY) else v) for k, v in pairs]
        if hidden != pairs:
            query = urlencode(hidden, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(text: str) -> str:
    """``text`` with every URL in it redacted (``redact_url``)."""
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def carries_credentials(value: str) -> bool:
    return redact(value) != value


def is_secret_name(name: str) -> bool:
    return any(m in name.upper() for m in SECRET_MARKERS)


def safe_env(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(the variables of ``env`` that are no credentials, the names of those left out)."""
    keep, dropped = {}, []
    for k, v in env.items():
        if is_secret_name(k) or carries_credentials(v):
            dropped.append(k)
        else:
            keep[k] = v
    return keep, dropped
