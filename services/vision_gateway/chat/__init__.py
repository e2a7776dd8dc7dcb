"""One chat turn, from request to stored answer: request model, admission, policy, images, prompt, turn, relay."""

from services.vision_gateway.chat.ask import Ask
from services.vision_gateway.chat.request import ChatRequest, parse_chat_request
from services.vision_gateway.chat.service import ChatService, StopResult
from services.vision_gateway.chat.turn import Caller, OpenTurn, PreparedChat, SentMessage

__all__ = [
    "Ask",
    "Caller",
    "ChatRequest",
    "ChatService",
    "OpenTurn",
    "PreparedChat",
    "SentMessage",
    "StopResult",
    "parse_chat_request",
]
