"""pixi's configuration for one test session, as a node operator of an air-gapped
cluster would write it.

- `config.toml` with `[mirrors]` that send conda-forge and the conda->PyPI mapping service
  to the loopback `Mirror`, and `tls-root-certs = "system"`: PyPI sits behind this
  machine's intercepting TLS proxy, whose CA only the system store holds (pixi's bundled
  `webpki` roots reject it unless `SSL_CERT_FILE` happens to be set).
- an empty `PIXI_HOME` and `XDG_CONFIG_HOME`, so no config of the user running the tests
  leaks in (pixi 0.77 reads `/etc/pixi`, `$XDG_CONFIG_HOME/pixi` and `$PIXI_HOME`; with
  `PIXI_CONFIG_FILE` set it reads only that file).
- `PIXI_CACHE_DIR` pinned to a per-machine directory that outlives the session, so PyPI
  wheels and conda packages are downloaded once per machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LOOPBACK_NO_PROXY", "PixiConfig", "build_config_toml", "build_node_env",
           "write_pixi_config"]

CONDA_FORGE = "https://conda.anaconda.org/conda-forge"
MAPPING_SERVICE = "https://conda-mapping.prefix.dev"
LOOPBACK_NO_PROXY = "127.0.0.1,localhost,::1"
TLS_ROOT_CERTS = "system"


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def build_config_toml(channel_mirror: str, mapping_mirror: str | None,
                      tls_root_certs: str = TLS_ROOT_CERTS) -> str:
    """The text of the session's pixi config (pure). `mapping_mirror=None` leaves the
    mapping service unmirrored (to show what that breaks)."""
    mapping = [] if mapping_mirror is None else [
        "# pixi maps solved conda packages to PyPI names whenever an environment has PyPI",
        "# dependencies; the site's mirror answers for the mapping service too.",
        f"{_toml_str(MAPPING_SERVICE)} = [{_toml_str(mapping_mirror)}]",
    ]
    return "\n".join([
        "# pixi config for an air-gapped node (written by tests/realpixi).",
        "# Trust the system store: PyPI is reached through an intercepting TLS proxy.",
        f"tls-root-certs = {_toml_str(tls_root_certs)}",
        "",
        "[mirrors]",
        "# conda-forge comes from the site's mirror.",
        f"{_toml_str(CONDA_FORGE)} = [{_toml_str(channel_mirror)}]",
        *mapping,
        "",
    ])


@dataclass(frozen=True)
class PixiConfig:
    """Where the session's pixi configuration lives.

    `config_file`: the config.toml (point pixi at it with `PIXI_CONFIG_FILE`);
    `home`/`xdg_config_home`: empty directories for `PIXI_HOME`/`XDG_CONFIG_HOME`;
    `cache_dir`: the per-machine `PIXI_CACHE_DIR`.
    """

    config_file: Path
    home: Path
    xdg_config_home: Path
    cache_dir: Path

    def env(self) -> dict[str, str]:
        return {
            "PIXI_CONFIG_FILE": str(self.config_file),
            "PIXI_HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.xdg_config_home),
            "PIXI_CACHE_DIR": str(self.cache_dir),
        }


def write_pixi_config(root: Path, channel_mirror: str, mapping_mirror: str | None,
                      cache_dir: Path, tls_root_certs: str = TLS_ROOT_CERTS) -> PixiConfig:
    """Lay out the session's config under `root` (created) and return where it is."""
    config = PixiConfig(
        config_file=root / "pixi-config" / "config.toml",
        home=root / "pixi-home",
        xdg_config_home=root / "xdg-config",
        cache_dir=cache_dir,
    )
    for d in (config.config_file.parent, config.home, config.xdg_config_home, cache_dir):
        d.mkdir(parents=True, exist_ok=True)
    config.config_file.write_text(
        build_config_toml(channel_mirror, mapping_mirror, tls_root_certs))
    return config


def build_node_env(pixi: Path, config: PixiConfig, https_proxy: str) -> dict[str, str]:
    """Every env var a Ray node, or a direct pixi call, needs to run `pixi` offline:
    `RAY_PIXI_EXE`, pixi's config/home/cache (see `PixiConfig.env`), the proxy that
    reaches PyPI (`HTTPS_PROXY`/`https_proxy`, loopback in `NO_PROXY`/`no_proxy`), and
    `RAY_USAGE_STATS_ENABLED=0` with the report URL on a closed loopback port."""
    return {
        "RAY_PIXI_EXE": str(pixi),
        **config.env(),
        "HTTPS_PROXY": https_proxy,
        "https_proxy": https_proxy,
        "NO_PROXY": LOOPBACK_NO_PROXY,
        "no_proxy": LOOPBACK_NO_PROXY,
        "RAY_USAGE_STATS_ENABLED": "0",
        # With usage stats off, Ray's dashboard still tells usage-stats.ray.io so once
        # per cluster it did not start from ray.init(); send that to a closed loopback port.
        "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
    }
