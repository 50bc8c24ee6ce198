"""The top floor: what people run (the `fleet` command, the demo, the DLQ office, the
market view, the local broker and the process supervisor). The only package that imports
both the orchestrator and the workers."""
