"""The offline world real pixi runs in for tests (see README.md)."""
