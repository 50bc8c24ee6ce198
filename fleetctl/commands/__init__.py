"""The ``fleet`` command's subcommands, one module per group, declared with click.

The rooms: :mod:`~fleetctl.commands.params` (argument types, shared options, the
decorators that hand a command its settings, and ``connected``: the one place a broker
is looked for), :mod:`~fleetctl.commands.kafka` (the local broker, ``topics apply``),
:mod:`~fleetctl.commands.workflows` (submit, tail, cancel, and tail's lines),
:mod:`~fleetctl.commands.dlq` (list, show, redrive and their printing),
:mod:`~fleetctl.commands.market` (``budget top-up`` and ``market``) and
:mod:`~fleetctl.commands.processes` (orchestrator, worker, demo). ``fleetctl.cli``
assembles the tree and turns its outcome into an exit status.

Every command closes the Kafka clients it opened before it returns: a librdkafka client
left for the interpreter's exit can hang it once the broker is gone.
"""

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2
