"""The HTTP layer: one module per API resource; handlers parse, call a service, return."""
