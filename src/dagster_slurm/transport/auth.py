"""Answers to what an SSH server asks during login (keyboard-interactive prompts: a password, a
one-time code). Nothing here is stored or logged; a prompt nobody can answer is remembered by its
text only, so the login error can say what the server wanted."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Awaitable, Callable

from dagster_slurm.config.ssh import SSHSettings
from dagster_slurm.errors import SSHConnectionError

Prompts = list[tuple[str, bool]]  # (prompt text, echo the answer?)
Ask = Callable[[str, str, Prompts], Awaitable["list[str] | None"]]  # (name, instructions, prompts) -> answers

OTP_COMMAND_TIMEOUT = 30.0
_CODE_WORDS = ("one-time", "one time", "otp", "oath", "code", "token", "verification", "passcode", "2fa",
               "factor", "duo")


def is_code_prompt(text: str) -> bool:
    """Whether a prompt asks for a one-time code (pam_oath: "One-time password (OATH) for `alice':")."""
    low = text.lower()
    return any(word in low for word in _CODE_WORDS)


class LoginAnswers:
    """Answers one login's prompts: the configured password for password prompts, ``otp_command``'s
    output for any other prompt, else whoever ``ask`` reaches (a terminal, for ``dagster-slurm login``)."""

    def __init__(self, settings: SSHSettings, ask: Ask | None = None):
        self.settings = settings
        self.ask = ask
        self.unanswered: str | None = None  # text of the first prompt nobody could answer
        self.refused = False  # the server asked again for what we had answered
        self._given: set[str] = set()  # each configured answer is offered once: a refused one is not resent

    async def challenge(self, name: str, instructions: str, prompts: Prompts) -> list[str] | None:
        if not prompts:
            return []  # an empty challenge only carries a message
        answers: list[str] = []
        for text, _echo in prompts:
            asks_password = "password" in text.lower() and not is_code_prompt(text)
            if asks_password and self.settings.password:
                if "password" in self._given:
                    self.refused = True  # asked again: the password was wrong
                    return None
                self._given.add("password")
                answers.append(self.settings.password)
            elif not asks_password and self.settings.otp_command and "code" not in self._given:
                self._given.add("code")
                answers.append(await self._one_time_code())
            else:
                break
        else:
            return answers
        if self.ask is not None:  # a person answers whatever the settings cannot
            rest = await self.ask(name, instructions, prompts[len(answers):])
            return None if rest is None else answers + list(rest)
        self.unanswered = prompts[len(answers)][0].strip() or "a keyboard-interactive answer"
        return None

    async def password(self) -> str | None:
        """Password authentication: the configured password is sent by asyncssh itself, once; without
        one, a person (``dagster-slurm login``) may type it, once."""
        if self.settings.password or self.settings.key_path or self.ask is None or "typed" in self._given:
            return None
        self._given.add("typed")
        answers = await self.ask("", "", [("Password: ", False)])
        return answers[0] if answers else None

    async def _one_time_code(self) -> str:
        """Run ``otp_command`` (no shell). Its text may hold a secret, so errors never quote it."""
        try:
            process = await asyncio.create_subprocess_exec(
                *shlex.split(self.settings.otp_command or ""), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
            out, _ = await asyncio.wait_for(process.communicate(), OTP_COMMAND_TIMEOUT)
        except (OSError, ValueError) as exc:
            raise SSHConnectionError(
                f"SSHConnectionResource.otp_command (SLURM_EDGE_NODE_OTP_COMMAND) could not be started: "
                f"{getattr(exc, 'strerror', None) or type(exc).__name__}. Check the program name."
            ) from None
        except asyncio.TimeoutError:
            raise SSHConnectionError(
                f"SSHConnectionResource.otp_command gave no code within {OTP_COMMAND_TIMEOUT:g} s."
            ) from None
        lines = out.decode(errors="replace").strip().splitlines()
        if process.returncode != 0 or not lines:
            raise SSHConnectionError(
                f"SSHConnectionResource.otp_command exited with status {process.returncode} "
                f"{'and printed nothing' if not lines else ''}: it must print the one-time code."
            )
        return lines[-1].strip()

    def refused_message(self, who: str, method: str) -> str:
        """The error for a refused login (``who``: user@host:port; ``method``: what we offered)."""
        if self.unanswered is None or self.refused:
            return (
                f"SSH authentication failed for {who} using {method}. "
                "Check SLURM_EDGE_NODE_USER and SLURM_EDGE_NODE_KEY_PATH / SLURM_EDGE_NODE_PASSWORD "
                "(SSHConnectionResource.user, key_path, password): the server refused them."
            )
        how = ("run `dagster-slurm login` in a terminal once (every run on this machine then shares that "
               "login while the connection agent lives), or set SSHConnectionResource.otp_command")
        if self.settings.share_connection == "direct":
            how = ("set SSHConnectionResource.share_connection='auto' and run `dagster-slurm login` in a "
                   "terminal, or set SSHConnectionResource.otp_command")
        return (
            f"{who} asks for {self.unanswered!r} after {method} (keyboard-interactive, e.g. a one-time "
            f"code), and no one is there to answer it: {how}."
        )
