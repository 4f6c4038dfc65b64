"""Encoders: pure cores that turn one sensor message (or a window of them) into semantic tokens."""
