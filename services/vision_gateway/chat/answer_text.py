"""AnswerText: a streamed answer's text so far, kept close to the size of the text itself.

An answer arrives a token at a time, a few characters each. Kept as a list of those pieces, each
costs a str object (about 50 bytes of header) and a list slot for its ~5 characters: ~70 bytes a
token, 70 KiB for a 1,000-token answer, on every stream a replica holds. Here the pieces are
joined every FOLD_PIECES into one string, so a held answer costs about its characters plus one
header per FOLD_PIECES tokens; each character is copied once more, not once per token.
"""

from __future__ import annotations

FOLD_PIECES = 64


class AnswerText:
    """Append pieces; `text()` is all of them joined; `len()` counts characters."""

    __slots__ = ("_folded", "_length", "_pieces")

    def __init__(self) -> None:
        self._folded: list[str] = []  # one string per FOLD_PIECES pieces
        self._pieces: list[str] = []  # the newest, fewer than FOLD_PIECES
        self._length = 0

    def append(self, piece: str) -> None:
        self._pieces.append(piece)
        self._length += len(piece)
        if len(self._pieces) >= FOLD_PIECES:
            self._folded.append("".join(self._pieces))
            self._pieces.clear()

    def text(self) -> str:
        return "".join(self._folded) + "".join(self._pieces)

    def __len__(self) -> int:
        return self._length

    def __bool__(self) -> bool:
        return self._length > 0
