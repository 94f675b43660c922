"""The daemon's settings (docs/config.md): every `meshguard up` option, from the defaults, the
config file (`meshguard.toml`) and the command line, each value with its source."""
