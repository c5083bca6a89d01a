"""The `ray-pixi` commands, one module each; `ray_pixi.cli` parses the command line and
dispatches to them. Each imports Ray, if at all, only when it runs, so `--help` and the
store commands work on a machine whose Ray cannot be imported."""
