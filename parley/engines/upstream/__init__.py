"""What the upstream engines (parley in front of another inference server) share.

``tokens``: the engine base of *tokens mode* (parley renders and counts with
the GGUF's vocabulary, the upstream decodes token ids, parley parses the
text back) and its generation loop over an upstream's normalised stream;
``generation``: a generation made by a task on the event loop; ``http``:
the httpx client, the status mapping and the ``Boundary`` of every upstream;
``options``: the options every upstream engine takes; ``backends``: several
backends for one model (affinity, load, circuit breaker, failover).
"""
