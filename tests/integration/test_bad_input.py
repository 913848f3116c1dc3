"""Bad input against the real cluster: each a clear error naming the setting and the fix, never a hang."""

import time

import asyncssh
import dagster as dg
import pytest

from dagster_slurm import ComputeResource, SlurmQueueConfig, SlurmResource, SSHConnectionResource
from dagster_slurm.errors import ConfigurationError, SSHConnectionError
from dagster_slurm.transport import SSHTransport

pytestmark = pytest.mark.cluster


def _connect(ssh: SSHConnectionResource):
    t = SSHTransport(ssh.settings())  # a fresh connection, not the shared one
    try:
        return t.run("true")
    finally:
        t.close()


def _fails(asset_fn, compute) -> str:
    result = dg.materialize([asset_fn], resources={"compute": compute}, raise_on_error=False)
    assert not result.success
    return result.get_step_failure_events()[0].step_failure_data.error.message


def _asset(payload, **kw):
    @dg.asset(name="bad", metadata=kw.pop("metadata", None))
    def bad(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(payload), **kw).get_results()

    return bad


def test_password_login_works(ssh, cluster_env):
    pw = ssh.model_copy(update={"key_path": None, "password": cluster_env["TESTCLUSTER_PASSWORD"]})
    assert _connect(pw).exit_status == 0


def test_wrong_password_is_refused_without_leaking_it(ssh):
    pw = ssh.model_copy(update={"key_path": None, "password": "not-the-password-xyz"})
    with pytest.raises(SSHConnectionError) as err:
        _connect(pw)
    assert "authentication failed" in str(err.value) and "SLURM_EDGE_NODE_PASSWORD" in str(err.value)
    assert "not-the-password-xyz" not in str(err.value)


def test_key_the_server_refuses(ssh, tmp_path):
    key = tmp_path / "other_key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(key))
    key.chmod(0o600)
    with pytest.raises(SSHConnectionError, match="SLURM_EDGE_NODE_KEY_PATH"):
        _connect(ssh.model_copy(update={"key_path": str(key)}))


def test_closed_port_fails_fast(ssh):
    started = time.monotonic()
    with pytest.raises(SSHConnectionError, match="SLURM_EDGE_NODE_PORT"):
        _connect(ssh.model_copy(update={"port": 1}))
    assert time.monotonic() - started < 5


def test_silent_server_fails_within_connect_timeout(ssh):
    """A loopback listener that accepts TCP but never sends the SSH banner: the login timeout ends it."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(SSHConnectionError, match=f"127.0.0.1:{port}") as err:
            _connect(ssh.model_copy(update={"port": port, "connect_timeout": 2}))
        elapsed = time.monotonic() - started
    assert "connect_timeout" in str(err.value)
    assert 1.5 < elapsed < 10


def test_unknown_host_key_under_strict(ssh, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(SSHConnectionError) as err:
        _connect(ssh.model_copy(update={"known_hosts_file": str(empty)}))
    assert "not in" in str(err.value) and "accept-new" in str(err.value) and "ssh-keyscan" in str(err.value)


def test_changed_host_key_under_strict_and_accept_new(ssh, tmp_path, cluster_env):
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    port = cluster_env["SLURM_EDGE_NODE_PORT"]
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{port} {other}\n")
    for mode in ("strict", "accept-new"):
        with pytest.raises(SSHConnectionError, match="CHANGED"):
            _connect(ssh.model_copy(update={"known_hosts_file": str(wrong), "host_key_checking": mode}))


def test_accept_new_records_an_unknown_host(ssh, tmp_path):
    path = tmp_path / "sub" / "known_hosts"
    assert _connect(ssh.model_copy(update={"known_hosts_file": str(path), "host_key_checking": "accept-new"}))
    assert "[127.0.0.1]:" in path.read_text()
    # and now strict accepts it
    assert _connect(ssh.model_copy(update={"known_hosts_file": str(path)})).exit_status == 0


def test_missing_payload(slurm, pipes_env, tmp_path):
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    text = _fails(_asset(tmp_path / "nope.py"), compute)
    assert "payload_path" in text and "does not exist" in text


@pytest.mark.parametrize(
    "requirements, expected",
    [({"partition": "no_such_partition"}, "invalid partition"), ({"time_limit": "abc"}, "time")],
)
def test_invalid_partition_or_time_passes_sbatch_message(slurm, pipes_env, payloads, requirements, expected):
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    text = _fails(_asset(payloads / "report.py", resource_requirements=requirements), compute)
    assert "sbatch rejected the job" in text and "sbatch: error" in text
    assert expected in text.lower()


def test_remote_base_not_writable(ssh, pipes_env, payloads):
    slurm = SlurmResource(ssh=ssh, remote_base="readonly/base", queue=SlurmQueueConfig(mem="256M"))
    text = _fails(_asset(payloads / "report.py"), ComputeResource(mode="slurm", slurm=slurm,
                                                                  pre_deployed_env_path=pipes_env))
    assert "remote_base" in text and "SLURM_DEPLOYMENT_BASE_PATH" in text


@pytest.mark.parametrize("where", ["missing", "no_activate"])
def test_pre_deployed_env_missing_or_without_activate(slurm, payloads, transport, remote_base, where):
    path = f"{remote_base}/envs/empty" if where == "no_activate" else f"{remote_base}/envs/does-not-exist"
    if where == "no_activate":
        transport.mkdir_p(path)
    text = _fails(_asset(payloads / "report.py"), ComputeResource(mode="slurm", slurm=slurm,
                                                                  pre_deployed_env_path=path))
    assert "pre_deployed_env_path" in text
    assert ("has no activate.sh" if where == "no_activate" else "does not exist") in text


def test_unknown_sbatch_option(slurm, pipes_env, payloads):
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    text = _fails(_asset(payloads / "report.py",
                         resource_requirements={"extra_sbatch_options": {"no-such-opt": "1"}}), compute)
    assert "unknown sbatch option 'no-such-opt'" in text and "constraint" in text


def test_skip_payload_upload_without_remote_payload(slurm, pipes_env, payloads):
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    text = _fails(_asset(payloads / "report.py", skip_payload_upload=True), compute)
    assert "skip_payload_upload" in text and f"{pipes_env}/scripts/report.py" in text


def test_key_and_password_both_set():
    with pytest.raises(ConfigurationError, match="key_path and password"), \
            pytest.warns(UserWarning, match="literal string in code"):
        SSHConnectionResource(host="h", key_path=__file__, password="x").settings()


def test_jump_host(ssh, cluster_env):
    """One hop through a bastion: here the test sshd itself serves as the jump host."""
    jumped = ssh.model_copy(update={"jump_host": "127.0.0.1", "jump_port": int(cluster_env["SLURM_EDGE_NODE_PORT"]),
                                    "jump_user": cluster_env["SLURM_EDGE_NODE_USER"]})
    t = SSHTransport(jumped.settings())
    try:
        assert t.run("echo via-jump").stdout.strip() == "via-jump"
        assert t._jump is not None and not t._jump.is_closed()  # the tunnel really went through it
    finally:
        t.close()


@pytest.fixture
def encrypted_key(tmp_path):
    """An encrypted OpenSSH key authorised for the test user (removed from authorized_keys afterwards)."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment="dagster-slurm-test-encrypted")
    path = tmp_path / "id_encrypted"
    key.write_private_key(str(path), passphrase="correct horse")
    path.chmod(0o600)
    authorized = "/home/slurmuser/.ssh/authorized_keys"
    line = key.export_public_key().decode().strip()
    with open(authorized, "a") as fh:
        fh.write(line + "\n")
    try:
        yield path
    finally:
        with open(authorized) as fh:
            kept = [entry for entry in fh if entry.strip() != line]
        with open(authorized, "w") as fh:
            fh.writelines(kept)


def test_encrypted_key_needs_its_passphrase(ssh, encrypted_key):
    with pytest.raises(SSHConnectionError, match="is encrypted: set key_passphrase") as err:
        _connect(ssh.model_copy(update={"key_path": str(encrypted_key)}))
    assert "SLURM_EDGE_NODE_KEY_PATH" in str(err.value)
    with pytest.raises(SSHConnectionError, match="could not be decrypted") as err:
        _connect(ssh.model_copy(update={"key_path": str(encrypted_key), "key_passphrase": "wrong phrase"}))
    assert "wrong phrase" not in str(err.value)
    ok = ssh.model_copy(update={"key_path": str(encrypted_key), "key_passphrase": "correct horse"})
    assert _connect(ok).exit_status == 0


def test_job_that_can_never_start_fails_fast_and_is_cancelled(slurm, pipes_env, payloads, transport):
    compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=pipes_env)
    started = time.monotonic()
    text = _fails(_asset(payloads / "trivial.py", resource_requirements={"cpus": 3}), compute)  # nodes have 2
    assert time.monotonic() - started < 60
    if "sbatch rejected the job" in text:
        # Slurm >= 24.11 refuses at submission ("CPU count per node can not be satisfied"); nothing was queued
        assert "can not be satisf" in text and "resource_requirements" in text, text
        return
    # 22.05 queues it, pending for PartitionConfig: the library cancels it at once and names the setting
    assert "can never start: pending reason PartitionConfig" in text and "cancelled" in text
    job_id = text.split("Slurm job ")[1].split(" ")[0]
    state = transport.run(f"sacct -X -n -P -o State -j {job_id}; squeue -h -t all -o %T -j {job_id}",
                          check=False).stdout
    assert "CANCELLED" in state


class _DroppingProxy:
    """A loopback TCP proxy to the test sshd that drops the first ``drops`` connections right after
    accepting them, as sshd does past MaxStartups."""

    def __init__(self, target_port: int, drops: int):
        import socket
        import threading

        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.target_port, self.drops, self.accepted = target_port, drops, 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.accepted <= self.drops:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()  # reset, before any banner
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            dst.close()

    def close(self) -> None:
        self.listener.close()


def test_handshake_dropped_by_the_server_is_retried_within_connect_timeout(ssh, tmp_path):
    known = tmp_path / "known_hosts"
    proxy = _DroppingProxy(ssh.port, drops=3)
    try:
        key = open(ssh.known_hosts_file).read().split("\n")[0].split(" ", 1)[1]
        known.write_text(f"[127.0.0.1]:{proxy.port} {key}\n")
        via_proxy = ssh.model_copy(update={"port": proxy.port, "known_hosts_file": str(known)})
        assert _connect(via_proxy).exit_status == 0
        assert proxy.accepted == 4  # three dropped, the fourth got through
        proxy.drops = 10**6  # now it always drops: a clear error within connect_timeout
        started = time.monotonic()
        with pytest.raises(SSHConnectionError, match="dropped the SSH handshake"):
            _connect(via_proxy.model_copy(update={"connect_timeout": 2}))
        assert time.monotonic() - started < 6
    finally:
        proxy.close()
