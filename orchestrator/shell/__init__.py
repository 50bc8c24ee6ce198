"""The orchestrator's Kafka shell: the only part of the orchestrator that touches a broker."""
