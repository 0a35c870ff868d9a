"""Credentials out of every message, log line, record and worker environment: the one place that knows them.

A value carries a credential when it holds one of three things, and only then:

- a URL's userinfo (``https://user:password@host/...``, ``postgresql://u:p@host/db``);
- a secret-bearing query (or fragment) parameter (a presigned URL's ``X-Amz-Signature``/``X-Amz-Credential``/
  ``X-Amz-Security-Token``, an Azure SAS ``sig``, CloudFront's ``Policy``/``Signature``/``Key-Pair-Id``, an
  ``access_token``): a name that is one of ``SECRET_QUERY_NAMES`` or has a word in ``SECRET_QUERY_WORDS``,
  never a name that merely contains one (``design``, ``monkey``, ``keyword`` are no credentials);
- a known secret pattern in the text itself (``SECRET_PATTERNS``: AWS access key ids, GitHub, GitLab, Slack and
  OpenAI tokens, JWTs, PEM private keys, an ``Authorization: Bearer`` value).

``redact`` replaces exactly those parts with ``***`` by editing the text in place -- never by parsing and
re-assembling a URL, which rewrites harmless values (``sqlite:////abs/mlflow.db`` came back as
``sqlite:/abs/mlflow.db``) and made them look like credentials. Text without a secret comes back byte for
byte, so ``carries_credentials(v)`` is ``redact(v) != v``. An environment variable is a credential by its name
(``is_secret_name``) or by its value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import unquote

# Markers of variable names that hold credentials (AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, DB_PASS, SMTP_PWD,
# GCP_CREDS, ...): anywhere in the name, the markers no harmless word holds (SECRETKEY, TOKENVALUE, PASSWORDFILE,
# CLIENTSECRET: a harmless variable dropped costs less than a secret forwarded) ...
SECRET_SUBSTRINGS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "PRIVATEKEY", "SIGNATURE")
# ... as whole ``_``-separated words (a plural too), the ones harmless words hold: PATH, MONKEY_MODE,
# PIPELINE_BYPASS_CACHE are settings ...
SECRET_MARKERS = ("PASS", "PWD", "PASSPHRASE", "KEY", "SESSION", "CREDS", "AUTH", "AUTHORIZATION", "COOKIE")
# ... and as the end of a compound word for KEY, whose plain substring would take MONKEY and KEYBOARD
SECRET_SUFFIXES = ("APIKEY", "ACCESSKEY", "SSHKEY", "MASTERKEY", "SIGNINGKEY", "ENCRYPTIONKEY", "AUTHKEY", "SASKEY")
# The shell's own variables named like a secret: PWD and OLDPWD are the working directories, not passwords
# (``*_PWD`` is one).
NOT_SECRET_NAMES = frozenset({"PWD", "OLDPWD"})
# Query parameter names (decoded, lower-case) that hold credentials: a name with one of these among its words
# (split at ``_``, ``-``, ``.`` and camelCase: sig, api_key, apiKey, Key-Pair-Id, session_id), ...
SECRET_QUERY_WORDS = frozenset({"sig", "key", "pwd", "auth", "session", "sessionid"})
# ... or one of the unambiguous markers anywhere in it (access_token, X-Amz-Signature, X-Amz-Credential,
# X-Amz-Security-Token, client_secret, apitoken, sastoken, accesskey, privatekey)
SECRET_QUERY_SUBSTRINGS = tuple(m.lower() for m in (*SECRET_SUBSTRINGS, *SECRET_SUFFIXES))
# ... or one of these as the whole name (CloudFront's Policy; a word of other names: privacy_policy, first_pass)
SECRET_QUERY_NAMES = frozenset({"policy", "pass"})
# secrets recognisable by their shape wherever they appear
SECRET_PATTERNS = (
    # a PEM private key: the whole block, or from a BEGIN line without its END (cut off) to the end of the text
    re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY-----|.*\Z)", re.DOTALL),
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),  # GitHub token
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,}"),  # GitHub fine-grained token
    re.compile(r"\bgl(?:pat|dt|rt|ptt|oas|cbt|soat|ft)-[A-Za-z0-9_.-]{20,}"),  # GitLab tokens
    re.compile(r"\bsk-(?:proj|svcacct|admin|ant)-[A-Za-z0-9_-]{20,}"),  # OpenAI project/service, Anthropic keys
    re.compile(r"\bsk-[A-Za-z0-9]{32,}\b"),  # OpenAI legacy key
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),  # Slack token
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),  # a JWT: header.payload.signature
    re.compile(r"(?<=\bBearer )[A-Za-z0-9._~+/=-]{8,}"),  # an Authorization header's value
)
HIDDEN = "***"
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()\[\]{}]+")


def _query_words(name: str) -> list[str]:
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", unquote(name))  # apiKey, accessToken: words of their own
    return [w for w in re.split(r"[_\-.\s]+", name.lower()) if w]


def is_secret_query_name(name: str) -> bool:
    """Whether a query parameter called ``name`` holds a credential: the name itself, or one of its words."""
    words = _query_words(name)
    return (
        (len(words) == 1 and words[0] in SECRET_QUERY_NAMES)
        or any(w in SECRET_QUERY_WORDS for w in words)
        or any(m in "".join(words) for m in SECRET_QUERY_SUBSTRINGS)
    )


def _redact_query(query: str) -> str:
    def one(pair: str) -> str:
        name, eq, _ = pair.partition("=")
        return f"{name}={HIDDEN}" if eq and is_secret_query_name(name) else pair

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
    if hash_:  # OAuth's implicit flow puts the token in the fragment: #access_token=...
        fragment = _redact_query(fragment)
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
    """Whether an environment variable called ``name`` holds a credential by its name: a word of it (split at
    ``_``) is a marker or its plural, it holds an unambiguous marker anywhere (``SECRET_SUBSTRINGS``), or a word
    ends in a compound KEY (``SECRET_SUFFIXES``); never the shell's ``PWD``/``OLDPWD``."""
    upper = name.upper()
    if upper in NOT_SECRET_NAMES:
        return False
    words = [w for w in re.split(r"[_\-.]+", upper) if w]
    return (
        any(w in SECRET_MARKERS or w.removesuffix("S") in SECRET_MARKERS for w in words)
        or any(m in upper for m in SECRET_SUBSTRINGS)
        or any(w.removesuffix("S").endswith(SECRET_SUFFIXES) for w in words)
    )


def safe_env(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(the variables of ``env`` that are no credentials, the names of those left out)."""
    keep, dropped = {}, []
    for k, v in env.items():
        if is_secret_name(k) or carries_credentials(v):
            dropped.append(k)
        else:
            keep[k] = v
    return keep, dropped
