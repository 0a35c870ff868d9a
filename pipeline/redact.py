"""Credentials out of every message, log line, record and worker environment: the one place that knows them.

A value carries a credential when it holds one of three things, and only then:

- a URL's userinfo (``https://user:password@host/...``, ``postgresql://u:p@host/db``);
- a secret-bearing query parameter (a presigned URL's ``X-Amz-Signature``/``X-Amz-Credential``/
  ``X-Amz-Security-Token``, an Azure SAS ``sig``, an ``access_token``: names in ``SECRET_QUERY``);
- a known secret pattern in the text itself (``SECRET_PATTERNS``: AWS access key ids, GitHub and Slack tokens,
  an ``Authorization: Bearer`` value).

``redact`` replaces exactly those parts with ``***`` by editing the text in place -- never by parsing and
re-assembling a URL, which rewrites harmless values (``sqlite:////abs/mlflow.db`` came back as
``sqlite:/abs/mlflow.db``) and made them look like credentials. Text without a secret comes back byte for
byte, so ``carries_credentials(v)`` is ``redact(v) != v``. An environment variable is a credential by its name
(``SECRET_MARKERS``) or by its value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import unquote

# variable names that hold credentials (AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, MLFLOW_TRACKING_PASSWORD, ...)
SECRET_MARKERS = ("SECRET", "TOKEN", "PASSWORD", "KEY", "SESSION", "CREDENTIAL", "AUTH")
# query parameters that hold credentials (matched lower-case, as substrings of the decoded name)
SECRET_QUERY = ("sig", "token", "key", "secret", "password", "credential", "auth", "session", "policy")
# secrets recognisable by their shape wherever they appear
SECRET_PATTERNS = (
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),  # GitHub token
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),  # Slack token
    re.compile(r"(?<=\bBearer )[A-Za-z0-9._~+/=-]{8,}"),  # an Authorization header's value
)
HIDDEN = "***"
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()\[\]{}]+")


def _redact_query(query: str) -> str:
    def one(pair: str) -> str:
        name, eq, _ = pair.partition("=")
        secret = eq and any(s in unquote(name).lower() for s in SECRET_QUERY)
        return f"{name}={HIDDEN}" if secret else pair

    return "&".join(one(p) for p in query.split("&"))


def redact_url(url: str) -> str:
    """``url`` with its userinfo and secret-bearing query values replaced by ``***``; the rest as given."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    rest, hash_, fragment = rest.partition("#")
    rest, qmark, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = HIDDEN + "@" + authority.rpartition("@")[2]
    if qmark:
        query = _redact_query(query)
    return f"{scheme}://{authority}{slash}{path}{qmark}{query}{hash_}{fragment}"


def redact(text: str) -> str:
    """``text`` with every URL in it redacted (``redact_url``) and every known secret pattern hidden."""
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    for pattern in SECRET_PATTERNS:
        text = pattern.sub(HIDDEN, text)
    return text


def carries_credentials(value: str) -> bool:
    """Whether ``value`` holds userinfo, a secret-bearing query parameter or a known secret pattern."""
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
