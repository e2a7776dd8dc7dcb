"""AnswerText: the streamed answer's text, folded as it grows, reads back exactly as appended."""

from __future__ import annotations

from services.vision_gateway.chat.answer_text import FOLD_PIECES, AnswerText


def test_text_is_every_piece_in_order_across_folds() -> None:
    text = AnswerText()
    assert not text
    assert text.text() == ""
    # Past the second level of folding (FOLD_PIECES folded strings joined into one), twice.
    pieces = [f"w{i} " for i in range(FOLD_PIECES * FOLD_PIECES * 2 + 5)] + ["é", "🙂", "漢"]
    for n, piece in enumerate(pieces, 1):
        text.append(piece)
        if n % 97 == 0:
            assert text.text() == "".join(pieces[:n])
    assert text.text() == "".join(pieces)
    assert len(text) == sum(len(p) for p in pieces)
    assert text


def test_folds_keep_few_objects() -> None:
    assert AnswerText()._parts is None, "an answer that never grows (most streams' thinking) makes no list"
    text = AnswerText()
    for n in range(1, FOLD_PIECES * FOLD_PIECES * 3):
        text.append("tok ")
        assert text._parts is not None
        # Instead of one string object per piece: fewer than FOLD_PIECES folded strings and loose pieces each.
        assert len(text._parts) < 2 * FOLD_PIECES, n
