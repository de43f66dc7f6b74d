"""Errors a user can act on.

Anything derived from `SlimkitError` is the user's to fix (a config field, a model file, a data
path); the CLI prints its message as one line and exits 2. Everything else is a bug in slimkit
and keeps its traceback.
"""


class SlimkitError(Exception):
    """A problem with the user's input, reported as one line."""


class ConfigError(SlimkitError):
    """A recipe or option is invalid; the message names the field."""


class ModelLoadError(SlimkitError):
    """A model file or factory could not be loaded."""


class DataError(SlimkitError):
    """A dataset could not be read or does not fit the model."""


class TechniqueError(SlimkitError):
    """A technique cannot be applied to this model, format or runtime."""
