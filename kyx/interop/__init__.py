"""Conversion between kyx parameters and other checkpoint layouts."""
