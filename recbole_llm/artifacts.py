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

Identity: every cached file is found by its full key, which is in its name (:func:`keyed_name`,
``<readable prefix>-<key>``), so two settings never share a path and one run's build never overwrites another's.
``unkeyed`` lists the config keys an artifact reads that do not change what it writes (the device, a batch size,
where files go); every other key it reads is in its key (tests/test_artifact_identity.py checks both). A cache left
by an earlier version under another name (``former``) is found once more: taken over (``adopt``: linked under the
new name) when it holds these settings, else rebuilt with one printed line that says so.

A run started elsewhere (a suite run, a Tune trial, a DDP process) is handed the names and the keys of what was
built for it (``artifact_keys`` = {file name: key}, recbole_llm.quick_start.shared_artifact_keys) and checks them
(:func:`check_handed_key`) before it trains: a file that records another key is one error naming it.
"""

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass

from recbole_llm.errors import UserError
from recbole_llm.fileio import build_once, link_or_copy

logger = logging.getLogger(__name__)

KEY_LENGTH = 16


def artifact_key(settings):
    """The one key format: first 16 hex digits of the SHA-1 of ``settings`` as sorted JSON (``str`` for other values)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:KEY_LENGTH]


_KEYED = re.compile(r"-[0-9a-f]{16}$")


def keyed_name(prefix, key):
    """The name of a cached file: its readable ``prefix`` and its full ``key`` (``minilm-mean-llmemb-<key>``)."""
    return f"{prefix}-{key}"


def name_prefix(name):
    """``name`` without the key :func:`keyed_name` put at its end (a name of your own is returned as it is)."""
    return _KEYED.sub("", name)


HANDED = "artifact_keys"  # the config key: {artifact file name: key} of what was built for a run


class HandedKeyError(UserError, ValueError):
    """A run was handed an artifact (its name and key) and the file under that name records another key."""


def handed_key(config, name):
    """The key ``config`` was handed for artifact file ``name`` (``artifact_keys``), or None."""
    handed = (config.get(HANDED) if isinstance(config, dict) else config[HANDED]) or {}
    return handed.get(name)


def check_handed_key(config, name, recorded, where, what="artifact"):
    """Refuse, in one line, a file whose recorded key is not the key this run was handed for ``name``."""
    expected = handed_key(config, name)
    if expected is not None and recorded != expected:
        raise HandedKeyError(
            f"{what} '{where}' records cache key {recorded}, but this run was handed {name} with key {expected} "
            f"({HANDED}: what was built for it): the file was rebuilt with other settings since; prepare the run again "
            f"(rerun the suite or command: it builds each setting under its own name), or drop {HANDED} to take the file as it is"
        )


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
    unkeyed = ()  # config keys it reads that do not change what it writes; any other key it reads is in its key

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

    def former(self, config, settings, key):
        """[(path, the key it records when it holds these settings)] of copies an earlier version left under other
        names (default: none); :meth:`ensure` looks at them once, when the file under the current name is missing."""
        return []

    def files(self, path):
        """The files that make up the artifact at ``path``, the one written last (its completion mark) last."""
        return [path]

    def adopt(self, config, old, path, key):
        """Take over the former copy ``old`` as ``path`` (default: each file linked, else copied, the last one last)."""
        for source, target in zip(self.files(old), self.files(path)):
            link_or_copy(source, target)

    def take_former(self, config, settings, key, path):
        """True when a former copy holds these settings and was taken over as ``path``; a former copy with other
        settings is left in place, with one printed line (the caller then builds ``path``)."""
        for old, recorded in self.former(config, settings, key):
            if old is None or os.path.abspath(old) == os.path.abspath(path) or not all(map(os.path.exists, self.files(old))):
                continue
            try:
                found = self.validate(old)
            except BrokenArtifact:
                found = None
            if found is not None and found == recorded:
                self.adopt(config, old, path, key)
                print(f"{self.what}: took over the former cache {old} (it holds these settings) as {path}")
                return True
            print(f"{self.what}: the former cache {old} holds other settings (key {found}, these {recorded}) or is not "
                  f"sound: building {path} (the old file is left in place)")
        return False

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
        adopted = [False]

        def current():
            return not forced[0] and self.is_current(self.find(config, settings, key), key)

        def build():
            if not forced[0] and self.find(config, settings, key) is None and self.take_former(config, settings, key, target):
                adopted[0] = True
                return
            self.build(config, settings, key, target)
            forced[0] = False

        built = build_once(target, current, build, self.what) and not adopted[0]
        found = self.find(config, settings, key) or target
        if not built and not adopted[0]:
            logger.info(f"{self.what}: reusing {found}")
            if self.reuse_line:
                print(self.reuse_line.format(what=self.what, path=found, key=key))
        return Ensured(found, key, settings, built)
