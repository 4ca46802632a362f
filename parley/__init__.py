"""parley: the Anthropic Messages API for models you run yourself."""

__version__ = "0.1.0"
