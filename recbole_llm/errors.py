"""User errors: one line that names the file or key and the fix; the command-line tools print it and exit 2.

Every error the plugin raises for bad input (a config key, a data file, a model path, a checkpoint) derives
from :class:`UserError`, next to the builtin class it always had (ValueError, FileNotFoundError), so
``except ValueError`` in user code keeps working. :func:`cli_entry` is the one error path of the CLIs: a
UserError is printed as ``error: <message>`` on stderr with exit code 2; ``--debug`` (or
``RECBOLE_LLM_DEBUG=1``) shows the traceback instead.
"""

import functools
import os
import sys


class UserError(Exception):
    """Bad input; the message is one line that says what to change."""


class ConfigError(UserError, ValueError):
    """A config key with an unknown name or a value that cannot work."""


class DataFileError(UserError, ValueError):
    """A data file (.inter / .item, a checkpoint) that cannot be read as it is."""


class MissingFileError(UserError, FileNotFoundError):
    """A file the run needs is not there."""


def pop_debug_flag(argv):
    """(argv without ``--debug``, whether it was there)."""
    argv = list(argv)
    debug = "--debug" in argv or os.environ.get("RECBOLE_LLM_DEBUG") == "1"
    return [a for a in argv if a != "--debug"], debug


def print_error(err):
    message = " ".join(str(err).split("\n")).strip() or type(err).__name__
    print(f"error: {message}", file=sys.stderr)
    return 2


def cli_entry(main):
    """Decorate a CLI's ``main(argv=None)``: a UserError is one line on stderr and return code 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        argv, debug = pop_debug_flag(sys.argv[1:] if argv is None else argv)
        try:
            return main(argv)
        except UserError as err:
            if debug:
                raise
            return print_error(err)

    return wrapper
