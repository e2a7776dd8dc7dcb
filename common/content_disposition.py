"""Content-Disposition of multipart/form-data parts, parsed by the RFC grammar.

aiohttp's own parser splits the header at every `;`, also inside a quoted string, so the legal
`filename="a;b=c; x.png"` left the part without a name. The standard library's email header
parser (the HTTP policy) implements the full grammar: quoted strings, quoted pairs and RFC 2231
`filename*=` values; it records anything it had to guess at as a defect, and we refuse those.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from email.policy import HTTP

from aiohttp.multipart import BadContentDispositionHeader


class MalformedDisposition(ValueError):
    """The header is missing, not form-data, or not well-formed."""


@dataclass(frozen=True, slots=True)
class FormDisposition:
    name: str | None
    filename: str | None


def parse_form_data_disposition(raw: str | None) -> FormDisposition:
    """`name` and `filename` of a form-data part; MalformedDisposition for anything doubtful.

    Refused: control characters, bytes that were not UTF-8 (aiohttp hands them over as lone
    surrogates), unterminated quotes, a parameter given twice, and other disposition types.
    """
    if not raw:
        raise MalformedDisposition("the part has no Content-Disposition")
    header = HTTP.header_factory("Content-Disposition", raw)
    if header.defects:
        raise MalformedDisposition(f"malformed Content-Disposition: {header.defects[0]}")
    if header.content_disposition != "form-data":
        raise MalformedDisposition("a part's Content-Disposition must be form-data")
    params = header.params
    return FormDisposition(name=params.get("name"), filename=params.get("filename"))


def ignore_aiohttp_disposition_warnings() -> None:
    """Silence aiohttp's BadContentDispositionHeader, process-wide.

    MultipartReader.next() runs aiohttp's parser on the first part and warns when it fails, as
    it does on legal quoted names. We parse the header ourselves, so the warning is noise; where
    warnings are errors (the test suite) it would even abort reading the body. Called by each
    app factory that reads multipart bodies; adding the same filter again is a no-op.
    """
    warnings.filterwarnings("ignore", category=BadContentDispositionHeader)
