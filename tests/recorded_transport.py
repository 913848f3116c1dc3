"""A transport that answers remote commands with real outputs recorded on the test cluster.

It stands in for SSH only: each command's answer is a recorded squeue/sacct/... output chosen by the
command's first word. Commands are kept in ``commands`` for the test to check."""

from dagster_slurm.transport.base import CommandResult, TransportStats


class RecordedTransport:
    def __init__(self, answers: dict[str, str]):
        self.answers = answers  # first word of the command -> recorded stdout
        self.commands: list[str] = []
        self.stats = TransportStats()

    def run(self, command: str, *, timeout=None, check=True, retry=False) -> CommandResult:
        self.commands.append(command)
        return CommandResult(command, 0, self.answers.get(command.split()[0], ""), "")
