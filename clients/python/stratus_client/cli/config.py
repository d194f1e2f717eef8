"""Where the CLI finds the service and its key: ``STRATUS_URL`` and ``STRATUS_API_KEY``, else
the file ``stratus login`` writes (``$XDG_CONFIG_HOME/stratus/config.toml``, by default under
``~/.config``). The environment wins, so a script can point one command elsewhere."""

from __future__ import annotations

import json
import os
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

import typer

from stratus_client import Client, ConfigurationError, RetryEvent, RetryPolicy

# A command gives up on a service that stays down sooner than a program would: someone is
# waiting at the terminal (each retry is shown on stderr).
RETRY_S = 30.0


@dataclass(frozen=True)
class Settings:
    url: str | None
    api_key: str | None


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "stratus" / "config.toml"


def read_file(path: Path | None = None) -> Settings:
    """The login file's settings (none when there is no file)."""
    path = path or config_path()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return Settings(None, None)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc
    url, key = data.get("url"), data.get("api_key")
    return Settings(url if isinstance(url, str) else None, key if isinstance(key, str) else None)


def settings() -> Settings:
    """The environment over the login file."""
    stored = read_file()
    return Settings(
        os.environ.get("STRATUS_URL") or stored.url,
        os.environ.get("STRATUS_API_KEY") or stored.api_key,
    )


def write_file(url: str, api_key: str, path: Path | None = None) -> Path:
    """Write the login file, readable by its owner only (mode 0600 from its first byte), in
    one step: a reader sees the old file or the new one."""
    path = path or config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # TOML basic strings take JSON's escapes, so json.dumps quotes any URL or key safely.
    text = f"url = {json.dumps(url)}\napi_key = {json.dumps(api_key)}\n"
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=".config.", suffix=".toml")
    try:
        with os.fdopen(fd, "w") as f:  # mkstemp makes it 0600
            f.write(text)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return path


def _note_retry(event: RetryEvent) -> None:
    why = f"{event.status}" if event.status is not None else type(event.error).__name__
    typer.echo(f"stratus: {why} from the service, trying again in {event.delay_s:.1f}s", err=True)


def connect(
    url: str | None = None,
    api_key: str | None = None,
    *,
    page_size: int = 100,
    retry_s: float = RETRY_S,
) -> Client:
    """A client for the configured service (``url``/``api_key`` over the configuration)
    that retries for at most ``retry_s``."""
    found = settings()
    url, api_key = url or found.url, api_key or found.api_key
    if not url:
        raise ConfigurationError("no service URL: set STRATUS_URL or run `stratus login`")
    if not api_key:
        raise ConfigurationError("no API key: set STRATUS_API_KEY or run `stratus login`")
    policy = RetryPolicy(total_s=retry_s, on_retry=_note_retry)
    return Client(url, api_key, retry=policy, page_size=page_size)
