"""Typed wire models of the Anthropic Messages API (requests, responses, events)."""
