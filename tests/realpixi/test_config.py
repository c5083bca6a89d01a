"""The session's pixi config is valid TOML that sends conda-forge and the mapping service
to the mirror (pixi accepting it is what test_pixi_offline shows)."""

from __future__ import annotations

import tomllib

from realpixi.config import build_config_toml


def test_config_mirrors_conda_forge_and_the_mapping_service() -> None:
    config = tomllib.loads(build_config_toml("http://127.0.0.1:1/conda-forge",
                                             "http://127.0.0.1:1/conda-mapping"))
    assert config["tls-root-certs"] == "system"
    assert config["mirrors"] == {
        "https://conda.anaconda.org/conda-forge": ["http://127.0.0.1:1/conda-forge"],
        "https://conda-mapping.prefix.dev": ["http://127.0.0.1:1/conda-mapping"],
    }
