"""An OpenAI-compatible front for the gateway: /v1/chat/completions and /v1/models as an adapter over ChatService."""
