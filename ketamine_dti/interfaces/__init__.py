"""Thin Nipype interfaces over the numeric core."""
