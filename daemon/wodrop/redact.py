"""Keep secrets (the API key, upload URLs) out of everything a person or a log collector sees.

Upload URLs are bearer capabilities: whoever holds one can write to the batch. Every string that leaves
the process through logs, reports, the status page or exceptions passes through :func:`redact`.

A server's error body seldom quotes the URL as it was registered: it may echo only the ``upload_id``
value, the query string without the host, a path token, or the URL percent-encoded or JSON-escaped
(``https:\\/\\/host\\/...``). So :func:`register_secret` on a URL also registers each secret-bearing part
(query values, token-like path segments, a password) and the encoded forms of all of them, and
:func:`redact` masks every occurrence of any of those forms, overlapping ones included; a URL left
holding a mask is then cut to ``scheme://host/«redacted»``. Ordinary words (``upload``, ``v0.2``,
``resumable``), object names, dates and small numbers in a URL are not secrets and stay readable; a
random-looking path segment is masked even when it is only an id: the safe side. Except the ids known
to be public (:func:`register_public`: the platform's batch id, which people need to match a batch with
the platform): a path segment equal to one is not masked, whenever either was registered. The URL
itself stays masked: by its other secrets, or whole when the public id was all it had.

Speed: :func:`redact` runs on every log line. The forms are compiled into one regex shaped like a trie
(``(?:ab(?:c|d)|x...)``), rebuilt lazily after the set changes, so a scan tries at most one branch per
distinct next character whatever the number of secrets; the URL pass uses possessive quantifiers.
Neither can backtrack badly.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote, unquote_plus, urlsplit

MASK = "«redacted»"

#: shorter values are not worth masking (they would mask ordinary words and numbers)
_MIN_SECRET = 6
_MIN_QUERY_VALUE = 8
_MIN_PATH_TOKEN = 16
#: query parameters that name or describe the object rather than grant access (GCS, S3, Azure SAS)
_PUBLIC_KEYS = frozenset({
    "uploadtype", "upload_protocol", "name", "alt", "prettyprint", "fields",
    "x-amz-algorithm", "x-amz-date", "x-amz-expires", "x-amz-signedheaders",
    "x-goog-algorithm", "x-goog-date", "x-goog-expires", "x-goog-signedheaders",
    "sv", "st", "se", "sp", "sr", "spr", "srt", "ss",
})
#: a number shorter than 16 digits or a date in a query is an expiry or a size, not a credential
_PUBLIC_VALUE = re.compile(r"\d{1,15}|\d{4}-?\d{2}-?\d{2}(?:[T ][\d:.]+(?:Z|[+-]\d{2}:?\d{2})?)?")
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_\-.~=+%]+")
#: a slug made of lowercase words (``resumable-upload-session``) is a name, not a token
_SLUG = re.compile(r"[a-z]{1,12}(?:[-_.~][a-z]{1,12})+")
_PCT = re.compile(r"%[0-9A-F]{2}")
# Any URL, also JSON-escaped (``https:\/\/``): scheme, host (after any ``user:pass@``), the rest.
# Possessive quantifiers: a scan never backtracks, whatever the line.
_URL = re.compile(r"(https?:(?:\\?/){2})(?:[^\s\"'<>/\\?#@]*+@)?([^\s\"'<>/\\?#]*+)[^\s\"'<>]*+")
_URL_HEAD = re.compile(r"^(https?://)(?:[^/?#\s@]*@)?([^/?#\s@]+)")

_lock = threading.Lock()
_registered: set[str] = set()  # every value given to register_secret: repeats are cheap no-ops
_forms: dict[str, str] = {}  # every text form of every secret part -> what replaces it
#: registered URL -> (its token-like path segments -> their forms, the whole URL's forms when nothing
#: else in it is secret): a segment is masked unless it is a public id
_path_tokens: dict[str, tuple[dict[str, dict[str, str]], dict[str, str]]] = {}
_public: set[str] = set()  # register_public
_matcher: tuple[re.Pattern[str], dict[str, str]] | None = None
_dirty = False


def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def _is_path_token(segment: str) -> bool:
    """A long, random-looking path segment (a signed-URL token, a session id), not a word or version."""
    if len(segment) < _MIN_PATH_TOKEN or not _TOKEN_CHARS.fullmatch(segment):
        return False
    if sum(c.isalnum() or c in "-_" for c in segment) * 5 < len(segment) * 4:  # mostly alnum/-_
        return False
    return not _SLUG.fullmatch(segment)


def _url_parts(url: str) -> tuple[set[str], set[str]]:
    """The secret-bearing parts of a URL: (token-like path segments, the others: query values and the
    password)."""
    try:
        u = urlsplit(url)
        password = u.password
    except ValueError:
        return set(), set()
    parts: set[str] = set()
    tokens: set[str] = set()
    if password and len(unquote(password)) >= _MIN_SECRET:
        parts |= {password, unquote(password)}
    for segment in u.path.split("/"):
        for s in {segment, unquote(segment)}:
            if _is_path_token(s):
                tokens |= {segment, s}
    for pair in re.split(r"[&;]", u.query):
        key, _, raw = pair.partition("=")
        if unquote_plus(key).strip().lower() in _PUBLIC_KEYS:
            continue
        for v in {raw, unquote_plus(raw), unquote(raw)}:
            if len(v) >= _MIN_QUERY_VALUE and not _PUBLIC_VALUE.fullmatch(v):
                parts.add(v)
    return tokens, parts


def _encodings(value: str) -> set[str]:
    """``value`` as it may be quoted back: percent-encoded (once, twice, either hex case, ``/`` kept
    or not) and JSON-escaped (with and without ``\\/``)."""
    forms = {value}
    for q in (quote(value, safe=""), quote(value, safe="/"), quote(value, safe=":/"),
              quote(quote(value, safe=""), safe="")):
        forms |= {q, _PCT.sub(lambda m: m.group().lower(), q)}
    for f in list(forms):
        j = json.dumps(f)[1:-1]
        forms |= {j, j.replace("/", "\\/")}
    return forms


def _trie_regex(words: Iterable[str]) -> str:
    """One regex matching any of ``words``, longest first at a given position, factored as a trie so a
    scan tries one branch per distinct next character instead of every word."""
    root: dict[str, Any] = {}
    for w in words:
        node = root
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = True

    def emit(node: dict[str, Any]) -> str:
        out = []
        # follow single-child chains without recursing (long URLs would exhaust the stack)
        while len(node) == 1 and "" not in node:
            (ch, node), = node.items()
            out.append(re.escape(ch))
        branches = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if branches:
            body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
            out.append(f"(?:{body})?" if "" in node else body)
        return "".join(out)

    return emit(root)


def _compile(forms: Mapping[str, str]) -> re.Pattern[str]:
    # A lookahead finds a match starting at every position, so overlapping secrets are all masked.
    try:
        return re.compile(f"(?=({_trie_regex(forms)}))")
    except (RecursionError, re.error, OverflowError):  # absurdly nested sets: a plain alternation
        alternation = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
        return re.compile(f"(?=({alternation}))")


def _forms_of(part: str) -> dict[str, str]:
    """Every form of one secret part -> what replaces it (a URL keeps its host)."""
    replacement = redact_url(part) if _is_url(part) else MASK
    return {form: replacement for form in _encodings(part) if len(form) >= _MIN_SECRET}


def _add(forms: dict[str, str], more: Mapping[str, str]) -> None:
    for form, replacement in more.items():
        forms.setdefault(form, replacement)


def register_secret(value: str | None) -> None:
    """Remember a secret so that :func:`redact` masks it wherever it appears. For a URL that means its
    secret-bearing parts (a URL with none is masked whole), in their percent-encoded and JSON-escaped
    forms too; a URL left with a masked part is then cut to ``scheme://host/«redacted»``."""
    global _dirty
    if not value or len(value) < _MIN_SECRET:
        return
    with _lock:
        if value in _registered:
            return
        _registered.add(value)
        tokens, parts = _url_parts(value) if _is_url(value) else (set(), {value})
        if not tokens and not parts:  # a URL with no part that looks secret: all of it is
            parts = {value}
        if tokens:  # masked unless public ids (register_public), decided when the matcher is built
            _path_tokens[value] = ({t: _forms_of(t) for t in tokens}, {} if parts else _forms_of(value))
        for part in parts:
            _add(_forms, _forms_of(part))
        _dirty = True


def register_public(value: str | None) -> None:
    """An id that is no secret though it looks like one (the platform's batch id, which people need to
    find a batch on the platform): a registered URL's path segment equal to it is not masked. Query
    values, passwords and values registered on their own stay masked; so does the URL itself."""
    global _dirty
    if not value:
        return
    with _lock:
        if value not in _public:
            _public.add(value)
            _dirty = True


def _all_forms() -> dict[str, str]:
    """Every form to mask now: the secrets, and the path tokens that are not public ids (a URL whose
    only secret was a public id is masked whole)."""
    forms = dict(_forms)
    for tokens, whole in _path_tokens.values():
        hidden = [f for t, f in tokens.items() if t not in _public and unquote(t) not in _public]
        for token_forms in hidden:
            _add(forms, token_forms)
        if not hidden:
            _add(forms, whole)
    return forms


def _current_matcher() -> tuple[re.Pattern[str], dict[str, str]] | None:
    global _matcher, _dirty
    with _lock:
        if _dirty:
            forms = _all_forms()
            _matcher = (_compile(forms), forms) if forms else None
            _dirty = False
        return _matcher


def redact_url(url: str | None) -> str:
    """``https://host/path?upload_id=X`` -> ``https://host/«redacted»``: host kept for debugging
    (a ``user:password@`` is dropped)."""
    if not url:
        return ""
    m = _URL_HEAD.match(url)
    return f"{m.group(1)}{m.group(2)}/{MASK}" if m else MASK


def redact(text: str) -> str:
    """Mask every registered secret in any of its forms, and any URL query string."""
    if not text:
        return text
    matcher = _current_matcher()
    if matcher is not None:
        pattern, forms = matcher
        out: list[str] = []
        done = 0  # text[:done] is settled
        span_end = -1  # end of the masked span being extended, -1 when none
        for m in pattern.finditer(text):
            start, end = m.span(1)
            if start < span_end:  # overlaps the current span: extend it
                span_end = max(span_end, end)
                continue
            if span_end >= 0:
                done = span_end
            out.append(text[done:start])
            out.append(forms[m.group(1)])
            span_end = end
        if span_end >= 0:
            text = "".join(out) + text[span_end:]
    return _URL.sub(_redact_url_in_text, text)


def _redact_url_in_text(m: re.Match[str]) -> str:
    """A URL that held a secret -> ``scheme://host/«redacted»``; any other URL loses its query string,
    which often carries a signature (``upload_id=...``, ``X-Goog-Signature=...``)."""
    url = m.group(0).rstrip(".,;:!?)]}")  # the sentence's punctuation, not the URL's
    tail = m.group(0)[len(url):]
    if MASK in url:
        return f"{m.group(1)}{m.group(2)}/{MASK}{tail}"
    head, question, query = url.partition("?")
    return f"{head}?{MASK}{tail}" if question and query else m.group(0)


def redact_value(value: Any) -> Any:
    """Recursively redact strings inside dicts/lists/tuples; other values pass unchanged."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    return value


def structlog_processor(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: redact every field, including rendered exceptions."""
    return {k: redact_value(v) for k, v in event_dict.items()}
