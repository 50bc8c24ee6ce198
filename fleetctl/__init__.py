"""The top floor: what people run (the `fleet` command, the demo, the DLQ office, the
market view, the local broker and the process supervisor). The only package that imports
both the orchestrator and the workers.

Importing it pins the product's own top-level packages for the process
(:mod:`fleetctl.own_packages`): the `fleet` console script imports this package before
anything else of ours, so a user's ``workers/`` on the path cannot replace the runtime.
"""

from fleetctl.own_packages import pin

pin()
