"""Errors that carry a one-line, actionable message for the user (no traceback needed)."""


class KetamineDTIError(Exception):
    """Base class: the message says what is wrong and what to do."""


class InputError(KetamineDTIError):
    """Bad input data (a file, row or column); the message names it."""


class ArmTooSmallError(InputError):
    """An arm of the trial has too few participants to analyse (its own exit code)."""
