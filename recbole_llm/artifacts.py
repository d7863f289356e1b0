"""One mechanism for every cached artifact: feature files, SCFT-tuned features, PCA / whitening companions, the
LLMEmb teacher and LLM-ESR's similar users.

An :class:`Artifact` says four things, and :meth:`Artifact.ensure` does the rest the same way for all of them:

- ``settings(config)``: a plain, JSON-able dict of everything that shapes the artifact (read through
  :func:`recbole_llm.schema.setting` where a plain dict may stand in for a Config);
- ``path(config, settings, key)``: where it is written (``find`` where an existing copy may be; by default the same);
- ``validate(path)``: open the file as a sound artifact and return the key recorded in it; a file that is not sound
  raises :class:`BrokenArtifact` (it is rebuilt, with a line saying so);
- ``build(config, settings, key, path)``: write it atomically (:mod:`recbole_llm.fileio`), recording ``key``.

The key is the same everywhere: :func:`artifact_key`, the first 16 hex digits of the SHA-1 of the settings' sorted
JSON. A file is reused only when it validates and its recorded key equals the key of the current settings; anything
else is rebuilt, under the build lock (two runs that miss the same artifact build it once: ``fileio.build_once``).
"""

import hashlib
import json
import logging
import os
from dataclasses import dataclass

from recbole_llm.fileio import build_once

logger = logging.getLogger(__name__)

KEY_LENGTH = 16


def artifact_key(settings):
    """The one key format: first 16 hex digits of the SHA-1 of ``settings`` as sorted JSON (``str`` for other values)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:KEY_LENGTH]


class BrokenArtifact(Exception):
    """A cached file that cannot serve as the artifact (truncated, out of sync, NaN, not the expected layout)."""


@dataclass
class Ensured:
    """What :meth:`Artifact.ensure` returns: the file, its key and settings, and whether this call built it."""

    path: str
    key: str
    settings: dict
    built: bool


class Artifact:
    """Base of the plugin's cached artifacts (module docstring). Subclasses hold their own parameters (a width, a
    source feature name) and define ``settings``, ``path``, ``validate`` and ``build``."""

    what = "artifact"
    reuse_line = "reusing up-to-date {what} {path} (cache key {key})"  # printed on reuse (None: only logged)

    def settings(self, config):
        raise NotImplementedError

    def key(self, settings):
        return artifact_key(settings)

    def path(self, config, settings, key):
        raise NotImplementedError

    def find(self, config, settings, key):
        """An existing copy of the artifact, or None (default: the file at ``path`` when it exists)."""
        path = self.path(config, settings, key)
        return path if os.path.exists(path) else None

    def validate(self, path):
        """Open ``path`` as a sound artifact and return its recorded key; :class:`BrokenArtifact` when it is not one."""
        raise NotImplementedError

    def build(self, config, settings, key, path):
        raise NotImplementedError

    def is_current(self, path, key):
        """True when ``path`` exists, is sound and records ``key``; a broken file is logged (and so rebuilt)."""
        if path is None:
            return False
        try:
            return self.validate(path) == key
        except BrokenArtifact as err:
            logger.warning(f"{self.what} {path}: {err}; rebuilding it")
            print(f"{self.what} {path} is broken ({err}); rebuilding it")
            return False

    def ensure(self, config, force=False, settings=None):
        """:class:`Ensured` for an up-to-date artifact of ``config``: reused when current, else built once under the
        build lock and written atomically. ``force`` builds it even when it is current."""
        settings = self.settings(config) if settings is None else settings
        key = self.key(settings)
        target = self.path(config, settings, key)
        forced = [force]  # build_once checks twice (before and under the lock): both say "stale" when forced

        def current():
            return not forced[0] and self.is_current(self.find(config, settings, key), key)

        def build():
            self.build(config, settings, key, target)
            forced[0] = False

        built = build_once(target, current, build, self.what)
        found = self.find(config, settings, key) or target
        if not built:
            logger.info(f"{self.what}: reusing {found}")
            if self.reuse_line:
                print(self.reuse_line.format(what=self.what, path=found, key=key))
        return Ensured(found, key, settings, built)
