"""AnswerText: the streamed answer's text, folded as it grows, reads back exactly as appended."""

from __future__ import annotations

from services.vision_gateway.chat.answer_text import FOLD_PIECES, AnswerText


def test_text_is_every_piece_in_order_across_folds() -> None:
    text = AnswerText()
    assert not text
    assert text.text() == ""
    pieces = [f"w{i} " for i in range(FOLD_PIECES * 3 + 5)] + ["é", "🙂", "漢"]
    for piece in pieces:
        text.append(piece)
    assert text.text() == "".join(pieces)
    assert len(text) == sum(len(p) for p in pieces)
    assert text


def test_folds_keep_few_objects() -> None:
    text = AnswerText()
    for _ in range(FOLD_PIECES * 10):
        text.append("tok ")
    # Ten folded strings and no loose pieces, instead of 640 string objects.
    assert len(text._folded) == 10
    assert text._pieces == []
