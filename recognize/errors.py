"""Errors a user can act on. The CLI prints their message on one line, never a traceback."""


class RecognizeError(Exception):
    """Base class: the message is the whole story for the user."""

    exit_code = 1


class InputError(RecognizeError):
    """An input path or pattern that names nothing usable."""

    exit_code = 2


class ImageError(RecognizeError):
    """One image could not be read; a batch reports it and goes on."""


class RecipeError(RecognizeError):
    """A recipe that cannot be built; the message names the place in the file and the fix."""

    exit_code = 2


class ModelFileError(RecognizeError):
    """A weight or asset file that is missing, partial or corrupt; the message says where to put it."""

    exit_code = 3


class SettingError(RecognizeError):
    """An environment setting (RECOGNIZE_MAX_PIXELS, RECOGNIZE_HOME, ...) with a value that cannot work."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message, or its type's name when it has none: what goes inside the
    parentheses of a one-line error (`str(exc).splitlines()[0]` fails on an empty message)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
