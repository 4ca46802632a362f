"""Message Batches: storage, the worker pool, and the wire shapes."""
