"""Where each setting comes from (docs/config.md#precedence): a flag given to `up` wins over
the config file, which wins over the default. Each effective value carries its source.

The config file is `--config FILE` if given, else `meshguard.toml` in the config dir
(meshguard/config.py: `$MESHGUARD_CONFIG_DIR`, /etc/meshguard as root, ...) when it exists.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from meshguard.config import ENV_CONFIG_DIR, resolve_config_dir
from meshguard.settings.config_file import ConfigFile, load_config_file
from meshguard.settings.schema import BOOLEAN, BY_KEY, CONFIG_FILE_NAME, SETTINGS, Value

DEFAULT = "default"
FILE = "file"
FLAG = "flag"
ENV = "env"


@dataclass(frozen=True)
class Source:
    kind: str  # DEFAULT, FILE, FLAG or ENV
    where: str = ""  # FILE: "path:line"; FLAG: "--flag"; ENV: the variable

    def __str__(self) -> str:
        return f"{self.kind} {self.where}" if self.where else self.kind


@dataclass(frozen=True)
class Effective:
    value: Value
    source: Source


@dataclass(frozen=True)
class Settings:
    values: dict[str, Effective]
    flags: dict[str, Value]  # the flags given, by key (they override the file on reload too)
    file: ConfigFile | None = None
    file_source: Source | None = None  # how the file was found

    def value(self, key: str) -> Value:
        return self.values[key].value

    def source(self, key: str) -> Source:
        return self.values[key].source


def given_flags(args: argparse.Namespace) -> dict[str, Value]:
    """The `up` options given on the command line (their argparse default is None)."""
    out: dict[str, Value] = {}
    for s in SETTINGS:
        v = getattr(args, s.key, None)
        if v is not None:
            out[s.key] = list(v) if isinstance(v, list) else v
    return out


def choose_config_file(explicit: str | Path | None,
                       env: Mapping[str, str]) -> tuple[Path | None, Source | None]:
    """The config file to read and how it was found; (None, None) when there is none."""
    if explicit is not None:
        return Path(explicit), Source(FLAG, "--config")
    path = resolve_config_dir(env) / CONFIG_FILE_NAME
    if not path.is_file():
        return None, None
    if env.get(ENV_CONFIG_DIR, ""):
        return path, Source(ENV, ENV_CONFIG_DIR)
    return path, Source(DEFAULT, "the config dir")


def merge(flags: Mapping[str, Value], file: ConfigFile | None,
          file_source: Source | None = None) -> Settings:
    values: dict[str, Effective] = {}
    for s in SETTINGS:
        if s.key in flags:
            values[s.key] = Effective(flags[s.key], Source(FLAG, s.flag))
        elif file is not None and s.key in file.values:
            values[s.key] = Effective(file.values[s.key], Source(FILE, file.where(s.key)))
        else:
            d = s.default
            values[s.key] = Effective(list(d) if isinstance(d, list) else d, Source(DEFAULT))
    return Settings(values, dict(flags), file, file_source)


def load_settings(flags: Mapping[str, Value], config: str | Path | None,
                  env: Mapping[str, str]) -> Settings:
    """Defaults, the config file and the flags (ConfigFileError for a bad file)."""
    path, how = choose_config_file(config, env)
    return merge(flags, load_config_file(path) if path is not None else None, how)


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    return load_settings(given_flags(args), getattr(args, "config", None), env)


def reread(settings: Settings, env: Mapping[str, str]) -> Settings:
    """The same flags over the config file as it is now (reload): the file read before, or
    the config dir's meshguard.toml if there was none then."""
    if settings.file is not None:
        return merge(settings.flags, load_config_file(settings.file.path), settings.file_source)
    return load_settings(settings.flags, None, env)


def flag_argv(flags: Mapping[str, Value]) -> list[str]:
    """The command-line form of `flags` (what a backgrounding `up` passes to `up -f`)."""
    argv: list[str] = []
    for key, v in flags.items():
        s = BY_KEY[key]
        if s.kind == BOOLEAN:
            argv += [s.flag] if v else []
        elif isinstance(v, list):
            argv += [f"{s.flag}={x}" for x in v]
        elif v is not None:
            argv.append(f"{s.flag}={v}")
    return argv
