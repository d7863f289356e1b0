"""User errors: one line that names the file or key and the fix; the command-line tools print it and exit 2.

Every error the plugin raises for bad input (a config key, a data file, a model path, a checkpoint) derives
from :class:`UserError`, next to the builtin class it always had (ValueError, FileNotFoundError), so
``except ValueError`` in user code keeps working. :func:`cli_entry` is the one error path of the CLIs: a
UserError is printed as ``error: <message>`` on stderr with exit code 2; ``--debug`` (or
``RECBOLE_LLM_DEBUG=1``) shows the traceback instead. It is also the one stop path: SIGTERM and SIGINT (Ctrl-C)
end a CLI with one line on stderr and exit code 128 + the signal's number, after the ``finally`` blocks and
exception handlers on the way (worker pools terminate their workers, locks are released); every result file is
written atomically, so what finished is kept, nothing is half-written, and the same command resumes.
"""

import functools
import os
import signal
import sys
import threading


class UserError(Exception):
    """Bad input; the message is one line that says what to change."""


class ConfigError(UserError, ValueError):
    """A config key with an unknown name or a value that cannot work."""


class DataFileError(UserError, ValueError):
    """A data file (.inter / .item, a checkpoint) that cannot be read as it is."""


class UnsafeFileError(DataFileError):
    """A torch file that holds pickled Python objects (loading it could run code): refused, never loaded or replaced."""


class MissingFileError(UserError, FileNotFoundError):
    """A file the run needs is not there."""


class Stopped(BaseException):
    """SIGTERM arrived (a BaseException, like KeyboardInterrupt: ``except Exception`` recorders let it through)."""

    def __init__(self, signum=signal.SIGTERM):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = int(signum)

    @classmethod
    def raise_for(cls, signum, frame):
        raise cls(signum)


_PENDING = []  # stops not raised yet: ignored in a finaliser, or handed to a library that stops gracefully (Ray Tune)


def note_stop(signum):
    """Remember a stop that a library handles itself (it ends its work, then returns): cli_entry still reports it."""
    _PENDING.append(Stopped(signum))


def _raise_swallowed(signum, frame):
    if _PENDING:
        raise _PENDING[-1]


def _redeliver_swallowed_stops(unraisable, default=sys.unraisablehook):
    """A signal that lands inside a ``__del__`` (a regex or tokenizer finaliser) raises there, and Python only prints
    "Exception ignored": the stop would be lost and the command would run to its end. Raise it again 50 ms later
    instead (SIGALRM), outside the finaliser; cli_entry still reports a stop that never got out."""
    if isinstance(unraisable.exc_value, (Stopped, KeyboardInterrupt)):
        _PENDING.append(unraisable.exc_value)
        signal.signal(signal.SIGALRM, _raise_swallowed)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        return
    default(unraisable)


def _stop_code(err):
    signum = err.signum if isinstance(err, Stopped) else int(signal.SIGINT)
    print(f"stopped by {signal.Signals(signum).name}: {STOP_LINE}", file=sys.stderr, flush=True)
    return 128 + signum


STOP_LINE = "finished results are kept and nothing is half-written; run the same command again to resume"


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
        on_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, Stopped.raise_for) if on_main else None
        previous_hook, sys.unraisablehook = sys.unraisablehook, _redeliver_swallowed_stops
        try:
            code = main(argv)
            return _stop_code(_PENDING[-1]) if _PENDING else code
        except UserError as err:
            if debug:
                raise
            return print_error(err)
        except (KeyboardInterrupt, Stopped) as err:
            if debug:
                raise
            return _stop_code(err)
        finally:
            _PENDING.clear()
            sys.unraisablehook = previous_hook
            if on_main:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper
