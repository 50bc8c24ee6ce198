"""The ``fleet`` command's subcommands, one module per group.

The rooms: :mod:`~fleetctl.commands.parser` (every argument and help text),
:mod:`~fleetctl.commands.kafka` (the local broker, ``topics apply``, and ``connected``:
the one place a broker is looked for), :mod:`~fleetctl.commands.workflows` (submit, tail,
cancel), :mod:`~fleetctl.commands.dlq` (list, show, redrive and their printing),
:mod:`~fleetctl.commands.market` (``budget top-up`` and ``market``) and
:mod:`~fleetctl.commands.processes` (orchestrator, worker, demo). ``fleetctl.cli`` parses
and dispatches.

Every command closes the Kafka clients it opened before it returns: a librdkafka client
left for the interpreter's exit can hang it once the broker is gone.
"""

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2
