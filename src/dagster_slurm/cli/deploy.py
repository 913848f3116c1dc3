"""``dagster-slurm deploy``: a versioned, pre-deployed environment for production."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import time
from pathlib import Path

from dagster_slurm.agent import transport_for
from dagster_slurm.compute.environment import PackSettings, make_packer
from dagster_slurm.config.slurm import BASE_PATH_ENV
from dagster_slurm.config.ssh import ENV_PREFIX, SSHConnectionResource
from dagster_slurm.errors import ConfigurationError
from dagster_slurm.packaging.cache import ensure_environment
from dagster_slurm.packaging.cache_key import compute_cache_key
from dagster_slurm.packaging.lockfile import find_lockfile
from dagster_slurm.packaging.packer import RemoteLayout


def validate_deploy_env(env: dict[str, str] | os._Environ = os.environ) -> None:
    """Fail fast: host and base path set; exactly one of key and password."""
    missing = [v for v in (ENV_PREFIX + "HOST", ENV_PREFIX + "USER", BASE_PATH_ENV) if not env.get(v)]
    if missing:
        raise ConfigurationError(f"deploy: set {', '.join(missing)} (see the README's environment table).")
    key, password = env.get(ENV_PREFIX + "KEY_PATH"), env.get(ENV_PREFIX + "PASSWORD")
    if key and password:
        raise ConfigurationError(f"deploy: both {ENV_PREFIX}KEY_PATH and {ENV_PREFIX}PASSWORD are set; set only one.")
    if not key and not password:
        raise ConfigurationError(f"deploy: set one of {ENV_PREFIX}KEY_PATH or {ENV_PREFIX}PASSWORD.")


def git_commit(project: Path) -> str | None:
    """The project's git commit; None when it is not a checkout or git is not installed."""
    try:
        proc = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=project, capture_output=True,
                              text=True)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def run_deploy(args) -> dict:
    validate_deploy_env()
    project = Path(args.project).resolve()
    if not project.is_dir():
        raise ConfigurationError(f"deploy --project {args.project!r}: no such folder.")
    commit = git_commit(project)
    version = args.version or commit
    if not version:
        raise ConfigurationError("deploy: the project is not a git checkout (or git is not installed); "
                                 "pass --version.")
    transport = transport_for(SSHConnectionResource.from_env().settings())
    base = transport.absolute(os.environ[BASE_PATH_ENV])
    layout = RemoteLayout(base)
    target = f"{base}/deployments/{version}"
    old_cwd = os.getcwd()
    os.chdir(project)
    try:
        settings = PackSettings(lockfile=args.lockfile, packer=args.packer,
                                pack_cmd=shlex.split(args.pack_cmd) if args.pack_cmd else None,
                                pack_platform=args.platform, auto_detect_platform=not args.platform,
                                remote_python=args.remote_python, python_version=args.python_version)
        packer = make_packer(settings, {}, transport)
        lock = find_lockfile(explicit=args.lockfile)
        key = compute_cache_key(lock.path.read_bytes(), packer.key_command(), packer.platform, packer.key_files())
        result = ensure_environment(transport, layout, packer, key, force=args.force, target=target,
                                    log=lambda m: print(m, flush=True))
        _upload_scripts(transport, project / args.scripts, target)
    finally:
        os.chdir(old_cwd)
    metadata = {
        "deployment_path": target,
        "platform": packer.platform,
        "git_commit": commit,
        "version": version,
        "cache_key": key,
        "packer": packer.name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **{k: v for k, v in result.figures.items()},
    }
    text = json.dumps(metadata, indent=2) + "\n"
    transport.write_bytes(f"{target}/deployment_metadata.json", text.encode())
    Path(args.metadata_out).write_text(text)
    print(f"Deployed to {target}")
    print(f"CI_DEPLOYED_ENVIRONMENT_PATH={target}")
    return metadata


def _upload_scripts(transport, folder: Path, target: str) -> None:
    """Upload ``folder`` to ``{target}/scripts`` via a temporary folder and a rename (never half-used)."""
    if not folder.is_dir():
        print(f"No scripts folder at {folder}; skipping the payload upload.")
        return
    tmp = f"{target}/.scripts-{secrets.token_hex(3)}"
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            remote = f"{tmp}/{path.relative_to(folder).as_posix()}"
            transport.mkdir_p(remote.rsplit("/", 1)[0])
            transport.put_file(str(path), remote)
    q = shlex.quote
    transport.run(f"cd {q(target)} && rm -rf scripts.old && {{ [ ! -e scripts ] || mv scripts scripts.old; }} && "
                  f"mv {q(tmp.rsplit('/', 1)[1])} scripts && rm -rf scripts.old")
    print(f"Uploaded {folder} to {target}/scripts")
