"""The mesh DNS resolver."""
