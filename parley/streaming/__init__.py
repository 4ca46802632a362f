"""Engine events → Anthropic stream events → SSE bytes, in three pure stages."""
