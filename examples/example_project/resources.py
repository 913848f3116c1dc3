"""Resources for each DAGSTER_DEPLOYMENT (development, staging_*, production_*).

- development: payloads run as local subprocesses (no cluster).
- staging_*: payloads run as Slurm jobs; the environment is packed from examples/uv.lock on demand
  and cached on the cluster.
- production_*: payloads and environment come from `dagster-slurm deploy` (CI_DEPLOYED_ENVIRONMENT_PATH).
"""

import os
from pathlib import Path

from dagster_slurm import ComputeResource, SlurmQueueConfig, SlurmResource
from dagster_slurm.config.deployment import compute_config_from_env, deployment_name

EXAMPLES = Path(__file__).resolve().parents[1]


def _is_production(deployment: str) -> bool:
    return deployment.startswith("production")


def get_resources() -> dict:
    deployment = deployment_name()
    config = {"compute_config": compute_config_from_env(deployment)}
    # From the library helper - automatic when DAGSTER_DEPLOYMENT=production_*:
    #   config["compute_config"]["pre_deployed_env_path"] = os.environ["CI_DEPLOYED_ENVIRONMENT_PATH"]
    #   config["compute_config"]["default_skip_payload_upload"] = True
    compute_config = config["compute_config"]
    if compute_config["mode"] == "slurm":
        compute_config["slurm"] = SlurmResource.from_env(
            queue=SlurmQueueConfig(partition=os.environ.get("EXAMPLE_PARTITION") or None,
                                   time_limit="00:10:00", cpus=1, mem="512M"),
        )
        compute_config["lockfile"] = str(EXAMPLES / "uv.lock")
    return {"compute": ComputeResource(**compute_config)}
