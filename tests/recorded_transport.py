"""A transport that answers remote commands with real outputs recorded on the test cluster.

It stands in for SSH only: each command's answer is a recorded squeue/sacct/... output chosen by the
command's first word. Commands are kept in ``commands`` for the test to check."""

from dagster_slurm.errors import RemoteCommandError
from dagster_slurm.transport.base import CommandResult, TransportStats


class RecordedTransport:
    def __init__(self, answers: dict[str, str | dict]):
        # first word of the command -> recorded stdout, or a recording {"stdout", "stderr", "exit_status"}
        self.answers = answers
        self.commands: list[str] = []
        self.probes: dict[str, str] = {}  # as a real transport keeps them: asked once, apart from commands
        self.stats = TransportStats()

    def _answer(self, command: str, check: bool) -> CommandResult:
        answer = self.answers.get(command, self.answers.get(command.split()[0], ""))
        if isinstance(answer, str):
            return CommandResult(command, 0, answer, "")
        if check and answer["exit_status"] != 0:  # as the SSH transport does
            raise RemoteCommandError(command, answer["exit_status"], answer["stderr"])
        return CommandResult(command, answer["exit_status"], answer["stdout"], answer["stderr"])

    def run(self, command: str, *, timeout=None, check=True, retry=False) -> CommandResult:
        self.commands.append(command)
        return self._answer(command, check)

    def run_later(self, command: str) -> None:
        self.run(command, check=False)

    def probe(self, command: str, *, check: bool = True) -> str:
        if command not in self.probes:
            self.probes[command] = self._answer(command, check).stdout
        return self.probes[command]
