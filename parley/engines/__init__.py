"""Inference engines behind one narrow interface (``parley.engines.base.Engine``)."""
