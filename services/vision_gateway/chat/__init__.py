"""One chat turn, from request to stored answer: policy, images, prompt, turn, relay, service."""

from services.vision_gateway.chat.service import ChatService, StopResult
from services.vision_gateway.chat.turn import ChatRequest, OpenTurn, PreparedChat, SentMessage

__all__ = ["ChatRequest", "ChatService", "OpenTurn", "PreparedChat", "SentMessage", "StopResult"]
