"""The lab server: OpenAI-compatible API, chat with feedback, next-token explorer, lineage pages."""
