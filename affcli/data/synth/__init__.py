"""Procedural stand-ins for the public affordance datasets."""
