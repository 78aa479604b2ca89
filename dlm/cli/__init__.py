"""The `dlm` command: run the service, administer its database, and use a running DLM."""

import click

from dlm.cli import remote, server, tokens, worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dlm")
def main() -> None:
    """DLM, the Data Lifecycle Manager.

    \b
    Start the service (embedded database, no set-up needed):
      dlm serve
    Use an existing PostgreSQL instead:
      DLM_DATABASE_URL=postgresql://dlm@db.example.org/dlm dlm db upgrade
      DLM_DATABASE_URL=postgresql://dlm@db.example.org/dlm dlm serve --host 0.0.0.0
    Then, from anywhere that reaches it (--url or DLM_URL, default http://127.0.0.1:8000):
      dlm ingest register hello hello.txt --storage local
      dlm request query --state READY
      dlm migration copy --name hello --to archive --wait
    A DLM that requires tokens takes yours from --token or DLM_TOKEN (`dlm token create` makes one).
    Every command has --help with examples, and --json for scripts.
    """


main.add_command(server.serve)
main.add_command(server.db)
main.add_command(worker.worker)
main.add_command(tokens.token)
main.add_command(remote.whoami)
for group in (remote.ingest, remote.request, remote.storage, remote.location, remote.migration):
    main.add_command(group)


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL.

    \b
    Examples:
      eval "$(dlm completion bash)"                # in ~/.bashrc
      dlm completion fish > ~/.config/fish/completions/dlm.fish
    """
    from click.shell_completion import get_completion_class

    completion_class = get_completion_class(shell)
    assert completion_class is not None  # the choices are the shells Click supports
    click.echo(completion_class(main, {}, "dlm", "_DLM_COMPLETE").source())
