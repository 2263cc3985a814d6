"""Workflow factories (wiring only): participant -> session -> steps."""
