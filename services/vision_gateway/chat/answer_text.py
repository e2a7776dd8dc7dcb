"""AnswerText: a streamed answer's text so far, kept close to the size of the text itself.

An answer arrives a token at a time, a few characters each. Kept as a list of those pieces, each
costs a str object (about 50 bytes of header) and a list slot for its ~5 characters: ~70 bytes a
token, 70 KiB for a 1,000-token answer, on every stream a replica holds. Here every FOLD_PIECES
pieces are joined into one string, and every FOLD_PIECES such strings into one again, so a held
answer costs about its characters plus fewer than 2 x FOLD_PIECES string headers and list slots
(under 2 KiB), whatever its length. The second join copies the text so far once per
FOLD_PIECES x (FOLD_PIECES - 1) pieces (240 tokens): ~4 copies of a 1,000-token answer, ~1 MB
of copying over a whole 10,000-token one. The list is made on the first piece: most streams'
thinking stays empty.
"""

from __future__ import annotations

FOLD_PIECES = 16


class AnswerText:
    """Append pieces; `text()` is all of them joined; `len()` counts characters."""

    __slots__ = ("_length", "_loose", "_parts")

    def __init__(self) -> None:
        # Folded strings, then the newest `_loose` pieces (fewer than FOLD_PIECES); None: nothing yet.
        self._parts: list[str] | None = None
        self._loose = 0
        self._length = 0

    def append(self, piece: str) -> None:
        parts = self._parts
        if parts is None:
            parts = self._parts = []
        parts.append(piece)
        self._length += len(piece)
        self._loose += 1
        if self._loose == FOLD_PIECES:
            parts[-FOLD_PIECES:] = ["".join(parts[-FOLD_PIECES:])]
            self._loose = 0
            if len(parts) == FOLD_PIECES:
                parts[:] = ["".join(parts)]

    def text(self) -> str:
        return "".join(self._parts) if self._parts else ""

    def __len__(self) -> int:
        return self._length

    def __bool__(self) -> bool:
        return self._length > 0
