"""Exceptions meant for people: each message says what, where, and how to fix it."""


class PosttrainError(Exception):
    """A user-facing error (bad config, bad data row, missing package). The CLI prints the
    message without a traceback and exits with status 2."""


class ConfigError(PosttrainError):
    """A config key or value is wrong; raised before any model loads."""


class DataError(PosttrainError):
    """A data row is malformed; the message names file, row and field."""


class RewardError(PosttrainError):
    """A reward function failed; the message names the function and the row."""
