"""The agent's wire format, naming and login answers: pure functions, no cluster."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket

import pytest

from dagster_slurm.agent import protocol
from dagster_slurm.config.ssh import SSHSettings
from dagster_slurm.errors import RemoteCommandError, SSHConnectionError
from dagster_slurm.transport.auth import LoginAnswers

BASE = SSHSettings(host="login.example", user="alice", key_path="/k")


def test_frames_round_trip_over_a_socket_pair():
    a, b = socket.socketpair()
    message = {"op": "read_many", "args": {"data": protocol.b64(b"\x00\xffbytes"), "n": [1, 2]}}
    protocol.send(a, message)
    assert protocol.receive(b) == message
    assert protocol.unb64(message["args"]["data"]) == b"\x00\xffbytes"
    a.close()
    with pytest.raises(protocol.AgentGone):
        protocol.receive(b)


def test_oversized_frame_is_refused():
    with pytest.raises(protocol.AgentGone, match="exceeds"):
        protocol.decode_length((protocol.MAX_FRAME + 1).to_bytes(4, "big"))


def test_errors_keep_their_type_and_fields_across_the_socket():
    err = protocol.error_from_wire(protocol.error_to_wire(RemoteCommandError("sbatch x", 1, "boom")))
    assert isinstance(err, RemoteCommandError) and err.exit_status == 1 and "boom" in err.stderr_tail
    err2 = protocol.error_from_wire(protocol.error_to_wire(SSHConnectionError("refused")))
    assert type(err2) is SSHConnectionError and str(err2) == "refused"
    err3 = protocol.error_from_wire(protocol.error_to_wire(KeyError("x")))
    assert "KeyError" in str(err3)


def test_agent_name_ignores_secrets_and_idle_time_but_not_the_target():
    same = dataclasses.replace(BASE, password=None, key_passphrase="p", otp_command="oathtool -b SECRET",
                               agent_idle_timeout=5, share_connection="agent")
    assert protocol.agent_name(same) == protocol.agent_name(BASE)
    assert protocol.agent_name(dataclasses.replace(BASE, port=2222)) != protocol.agent_name(BASE)
    assert protocol.agent_name(dataclasses.replace(BASE, jump_host="bastion")) != protocol.agent_name(BASE)
    assert "SECRET" not in protocol.agent_name(same)
    assert protocol.agent_name(BASE).startswith(f"v{protocol.VERSION}-")


def test_runtime_dir_must_be_private(tmp_path, monkeypatch):
    folder = tmp_path / "rt"
    monkeypatch.setenv(protocol.RUNTIME_DIR_ENV, str(folder))
    assert protocol.runtime_dir() == str(folder) and os.stat(folder).st_mode & 0o777 == 0o700
    os.chmod(folder, 0o755)
    with pytest.raises(protocol.AgentUnavailable, match="not a private folder"):
        protocol.runtime_dir()


def _answer(settings, prompts, ask=None):
    answers = LoginAnswers(settings, ask)
    return answers, asyncio.run(answers.challenge("", "", prompts))


def test_password_prompt_gets_the_password_and_a_code_prompt_the_otp_command(tmp_path):
    script = tmp_path / "otp"
    script.write_text("#!/bin/sh\necho 123456\n")
    script.chmod(0o700)
    settings = SSHSettings(host="h", password="pw", otp_command=str(script))
    _, got = _answer(settings, [("Password: ", False), ("One-time password (OATH) for `alice': ", False)])
    assert got == ["pw", "123456"]
    assert _answer(settings, [])[1] == []  # a message-only challenge


def test_unanswerable_prompt_fails_naming_login_and_the_prompt():
    answers, got = _answer(BASE, [("One-time password (OATH) for `alice': ", False)])
    assert got is None
    message = answers.refused_message("alice@login:22", "key /k")
    assert "dagster-slurm login" in message and "One-time password" in message and "otp_command" in message
    direct = LoginAnswers(dataclasses.replace(BASE, share_connection="direct"))
    asyncio.run(direct.challenge("", "", [("Code: ", False)]))
    assert "share_connection='auto'" in direct.refused_message("a@b:22", "key /k")


def test_a_person_answers_what_settings_cannot():
    async def ask(name, instructions, prompts):
        return ["typed"] * len(prompts)

    assert _answer(BASE, [("Verification code: ", False)], ask)[1] == ["typed"]


def test_failing_otp_command_is_a_clear_error_without_its_text(tmp_path):
    settings = SSHSettings(host="h", otp_command="/nonexistent/oathtool --totp -b TOPSECRET")
    with pytest.raises(SSHConnectionError, match="could not be started") as info:
        _answer(settings, [("Code: ", False)])
    assert "TOPSECRET" not in str(info.value)
    failing = tmp_path / "fails"
    failing.write_text("#!/bin/sh\nexit 3\n")
    failing.chmod(0o700)
    with pytest.raises(SSHConnectionError, match="status 3"):
        _answer(SSHSettings(host="h", otp_command=str(failing)), [("Code: ", False)])


def test_mixed_prompts_a_person_answers_the_rest_and_a_repeated_password_prompt_is_a_refusal():
    async def ask(name, instructions, prompts):
        return ["typed"] * len(prompts)

    settings = SSHSettings(host="h", password="pw")
    assert _answer(settings, [("Password: ", False), ("Verification code: ", False)], ask)[1] == ["pw", "typed"]
    answers = LoginAnswers(settings)
    assert asyncio.run(answers.challenge("", "", [("Password: ", False)])) == ["pw"]
    assert asyncio.run(answers.challenge("", "", [("Password: ", False)])) is None  # asked again: refused
    assert "authentication failed" in answers.refused_message("a@h:22", "password")


def test_an_agent_of_another_version_gives_accounting_this_one_can_read():
    """An agent started by a newer release sends fields this one lacks (and an older one lacks new ones):
    the wait gets what it knows instead of a watcher thread dying on a TypeError (which hung the wait)."""
    from dagster_slurm.agent.client import accounting_from

    acct = accounting_from({"job_id": "5", "state": "COMPLETED", "exit_code": "0:0", "elapsed_seconds": 3,
                            "a_field_of_a_later_release": 1})
    assert (acct.job_id, acct.state, acct.elapsed_seconds, acct.gpus) == ("5", "COMPLETED", 3, None)
