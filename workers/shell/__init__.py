"""The worker's Kafka shell: consume tasks, run them through :mod:`workers.execute`, produce
results, commit offsets."""
