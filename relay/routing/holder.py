"""The live forwarding config: swapped whole on reload, or not at all."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping

from relay.errors import ConfigError
from relay.log import secret_filter
from relay.routing.describe import url_secrets
from relay.routing.loader import load_config
from relay.routing.model import RoutingConfig

logger = logging.getLogger(__name__)
Stamps = tuple[tuple[int, int, int] | None, ...]  # (mtime_ns, size, inode) of each secret file, None if missing


def config_secrets(cfg: RoutingConfig) -> list[str]:
    """Every secret value of ``cfg`` (for the log redaction filter)."""
    out: list[str] = []
    for group in (cfg.subscriptions, cfg.stream_clients):
        out.extend(t.reveal() for x in group for t in x.tokens)
    out.extend(p.token.reveal() for p in cfg.pull)
    for t in cfg.targets:
        out.extend(s.reveal() for s in (*t.secrets, t.token) if s is not None)
        out.extend(value for _, value in t.headers if len(value) >= 4)  # header values may be credentials
        out.extend(url_secrets(t.url))
    for p in cfg.pull:
        out.extend(url_secrets(p.url))
    for r in cfg.rules:
        out.extend(tr.key.reveal() for tr in r.transform if tr.key is not None)
    return out


class ConfigHolder:
    """Holds the current RoutingConfig; ``reload`` validates a new file before swapping it in."""

    def __init__(self, path: str, env: Mapping[str, str] | None = None) -> None:
        self.path = path
        self._env = env
        self.current: RoutingConfig = load_config(path, env)
        self._mtime = self._stat()
        self._secret_stamps = self._secret_stat(self.current.secret_files)
        self._listeners: list[Callable[[RoutingConfig], None]] = []
        secret_filter.set_secrets(config_secrets(self.current))

    def __call__(self) -> RoutingConfig:
        return self.current

    def on_change(self, fn: Callable[[RoutingConfig], None]) -> None:
        self._listeners.append(fn)

    def _stat(self) -> float | None:
        try:
            return os.stat(self.path).st_mtime
        except OSError:
            return None

    @staticmethod
    def _secret_stat(paths: tuple[str, ...]) -> Stamps:
        # mtime, size and inode: Kubernetes replaces a mounted secret by swapping a symlink, which
        # may keep the mtime of a same-sized file but never its inode
        out: list[tuple[int, int, int] | None] = []
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                out.append(None)
            else:
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def changed_on_disk(self) -> bool:
        """Whether forwarding.yaml or one of the secret files it names changed since the last load."""
        return self._stat() != self._mtime or self.secrets_changed_on_disk()

    def secrets_changed_on_disk(self) -> bool:
        """Whether a secret file (``*_file``) of the current config changed since it was read."""
        return self._secret_stat(self.current.secret_files) != self._secret_stamps

    def reload(self) -> bool:
        """Load and validate the file and its secrets again (files and env); keep the old config if
        the new one is bad. The new config replaces the old in one assignment: a request in flight
        keeps the config it started with, the next one sees the new."""
        return self._apply(*self._read())

    async def reload_async(self) -> bool:
        """``reload`` for the event loop: the files are stat'ed, read and parsed on a worker thread
        (a secret may sit on a slow mount); the swap and the listeners run on the loop."""
        return self._apply(*await asyncio.to_thread(self._read))

    def _read(self) -> tuple[float | None, RoutingConfig | ConfigError, Stamps]:
        mtime = self._stat()
        try:
            new = load_config(self.path, self._env)
        except ConfigError as err:
            # a missing secret file would otherwise be retried by the watcher every interval
            return mtime, err, self._secret_stat(self.current.secret_files)
        return mtime, new, self._secret_stat(new.secret_files)

    def _apply(self, mtime: float | None, new: RoutingConfig | ConfigError, stamps: Stamps) -> bool:
        self._mtime, self._secret_stamps = mtime, stamps
        if isinstance(new, ConfigError):
            logger.error("config reload refused, keeping the previous config", extra={"problems": new.problems})
            return False
        self.current = new
        secret_filter.set_secrets(config_secrets(new))
        for fn in self._listeners:
            fn(new)
        logger.info("config reloaded", extra={"path": self.path})
        return True
