"""The market for contended resources: pure clearing, leases and budgets inside the
orchestrator's Kafka shell."""
