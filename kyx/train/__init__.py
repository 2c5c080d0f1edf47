"""Trainers: each builds data, model and a pure step; the loop is shared."""
