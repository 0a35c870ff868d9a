"""Thin DVC entry points: each reads its paths from argv (as dvc.yaml passes them) and calls one pipeline
function."""
