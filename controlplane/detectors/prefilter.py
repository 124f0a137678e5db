"""One scan of a text for a whole set of regular expressions, with Hyperscan where it is installed.

The detectors define their patterns with Python's `re`, and `re` alone decides what matches.
Running every pattern over every text costs most of the per-event time of the pattern-based
detectors, although almost no text matches any of them. Hyperscan compiles the set into one
automaton in prefilter mode, where constructs that it cannot run exactly (lookarounds, some
bounded repeats) are widened. It may therefore name a pattern that `re` then does not match,
but it never leaves out one that `re` would match. Only the patterns it names run in `re`.

Compiling takes up to about 20 s for patterns with long bounded repeats and Unicode classes.
The compiled set is therefore kept in `~/.cache/controlplane/hyperscan` (`CONTROLPLANE_CACHE_DIR`
moves it), under a hash of the patterns, the flags, the Hyperscan version and the machine.
Where Hyperscan is missing (it ships wheels for x86-64 Linux and macOS only) or rejects a
pattern, every pattern runs in `re`: the results are the same, only slower.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import re
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Return the directory of compiled pattern sets."""
    root = os.environ.get("CONTROLPLANE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "controlplane"
    )
    return Path(root) / "hyperscan"


class PatternPrefilter:
    """Selector of the patterns of a set that may match a text, or of all of them when Hyperscan is unavailable."""

    def __init__(self, name: str, patterns: Sequence[re.Pattern[str]], use_hyperscan: bool = True) -> None:
        self.name = name
        self._all = tuple(range(len(patterns)))
        self._database: Any = None
        self._lock = threading.Lock()  # a database has one scratch space, which two scans cannot share
        if not use_hyperscan:
            return
        try:
            import hyperscan
        except ImportError:
            logger.info("Hyperscan is not installed: the %s patterns run one by one", name)
            return
        try:
            self._database = _load_or_compile(hyperscan, name, patterns)
        except hyperscan.error as exc:
            logger.warning("Hyperscan could not compile the %s patterns, which run one by one: %s", name, exc)

    @property
    def active(self) -> bool:
        """Whether scans go through Hyperscan."""
        return self._database is not None

    def candidates(self, text: str) -> Sequence[int]:
        """Return the indexes, in order, of the patterns that may match `text`."""
        if self._database is None:
            return self._all
        hits: set[int] = set()
        # Hyperscan needs valid UTF-8. A lone surrogate becomes "?", which every class of the patterns treats alike.
        data = text.encode("utf-8", "replace")
        with self._lock:
            self._database.scan(data, match_event_handler=_collect, context=hits)
        return sorted(hits)


def _collect(pattern_id: int, start: int, end: int, flags: int, hits: set[int]) -> None:
    hits.add(pattern_id)


def _flags(hyperscan: Any, pattern: re.Pattern[str]) -> int:
    flags = (
        hyperscan.HS_FLAG_PREFILTER | hyperscan.HS_FLAG_UTF8 | hyperscan.HS_FLAG_UCP
        | hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_ALLOWEMPTY
    )
    if pattern.flags & re.IGNORECASE:
        flags |= hyperscan.HS_FLAG_CASELESS
    if pattern.flags & re.MULTILINE:
        flags |= hyperscan.HS_FLAG_MULTILINE
    if pattern.flags & re.DOTALL:
        flags |= hyperscan.HS_FLAG_DOTALL
    return flags


def _load_or_compile(hyperscan: Any, name: str, patterns: Sequence[re.Pattern[str]]) -> Any:
    flags = [_flags(hyperscan, pattern) for pattern in patterns]
    key = hashlib.sha256(
        repr(([pattern.pattern for pattern in patterns], flags, hyperscan.__version__, platform.machine())).encode()
    ).hexdigest()[:20]
    path = cache_dir() / f"{name}-{key}.hsdb"
    if path.exists():
        try:
            database = hyperscan.loadb(path.read_bytes(), hyperscan.HS_MODE_BLOCK)
            database.scratch = hyperscan.Scratch(database)  # a loaded database comes without one
            return database
        except (OSError, hyperscan.error) as exc:
            logger.warning("ignoring the cached %s patterns at %s: %s", name, path, exc)
    started = time.perf_counter()
    database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    database.compile(
        expressions=[pattern.pattern.encode("utf-8") for pattern in patterns],
        ids=list(range(len(patterns))),
        elements=len(patterns),
        flags=flags,
    )
    logger.info("compiled the %d %s patterns with Hyperscan in %.1f s", len(patterns), name, time.perf_counter() - started)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written to a temporary file and renamed, so that workers starting together never read half a file.
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as handle:
            handle.write(hyperscan.dumpb(database))
        os.replace(handle.name, path)
    except OSError as exc:
        logger.warning("could not cache the compiled %s patterns in %s: %s", name, path.parent, exc)
    return database
