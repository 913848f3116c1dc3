"""Build the compute configuration for each ``DAGSTER_DEPLOYMENT`` value from the environment.

=========================  ==================================================================
``development`` (default)  local mode: payloads run as subprocesses here, no cluster needed
``staging_*``              slurm mode, environment packed on demand and cached on the cluster
``production_*``           slurm mode on the CI-deployed environment ``CI_DEPLOYED_ENVIRONMENT_PATH``,
                           payloads taken from ``{CI_DEPLOYED_ENVIRONMENT_PATH}/scripts/``
=========================  ==================================================================
"""

from __future__ import annotations

import os
from typing import Any

from dagster_slurm.errors import ConfigurationError

DEPLOYMENT_ENV = "DAGSTER_DEPLOYMENT"
DEPLOYED_PATH_ENV = "CI_DEPLOYED_ENVIRONMENT_PATH"


def deployment_name() -> str:
    return os.environ.get(DEPLOYMENT_ENV, "").strip() or "development"


def is_production(deployment: str) -> bool:
    return deployment.startswith("production")


def is_staging(deployment: str) -> bool:
    return deployment.startswith("staging")


def compute_config_from_env(deployment: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``ComputeResource`` (without ``slurm``) for this deployment."""
    deployment = deployment or deployment_name()
    if deployment == "development":
        return {"mode": "local"}
    if not (is_staging(deployment) or is_production(deployment)):
        raise ConfigurationError(
            f"{DEPLOYMENT_ENV}={deployment!r} is not known. Use 'development', 'staging_<name>' "
            "(e.g. staging_docker, staging_supercomputer) or 'production_<name>'."
        )
    config: dict[str, Any] = {"mode": "slurm", "auto_detect_platform": True}
    if is_production(deployment):
        path = os.environ.get(DEPLOYED_PATH_ENV)
        if not path:
            raise ConfigurationError(
                f"{DEPLOYMENT_ENV}={deployment} needs {DEPLOYED_PATH_ENV}: export the path that "
                "`dagster-slurm deploy` printed (it is also in deployment_metadata.json)."
            )
        config["pre_deployed_env_path"] = path
        config["default_skip_payload_upload"] = True
    return config


def compute_resource_from_env(deployment: str | None = None, **overrides: Any):
    """A ``ComputeResource`` for this deployment; SSH and base path from ``SLURM_*`` variables."""
    from dagster_slurm.compute.resource import ComputeResource
    from dagster_slurm.config.slurm import SlurmResource

    config = compute_config_from_env(deployment)
    if config["mode"] == "slurm" and "slurm" not in overrides:
        config["slurm"] = SlurmResource.from_env()
    config.update(overrides)
    return ComputeResource(**config)
