#!/usr/bin/env bash
# Submit a workflow with kcat: one JSON WorkflowSubmitted, one line, keyed by its id.
#   docs/examples/submit-with-kcat.sh [bootstrap] [topic] [workflow id]
# Then `fleet tail --workflow <id>` shows it run. See docs/json-requests.md.
set -euo pipefail
BOOTSTRAP=${1:-localhost:9092}
TOPIC=${2:-fleet.workflow.requests}
ID=${3:-wf-kcat-$(date +%s)}

printf '{"workflow_id":"%s","submitted_at_ms":%s,"submitted_by":"kcat","spec":{"name":"hello-kcat","input":{"text":"hello from kcat"},"steps":[{"id":"count","capability":"text.wordcount","input":{"text":"$.input.text"}}],"output":"$.steps.count.output"}}\n' \
  "$ID" "$(( $(date +%s) * 1000 ))" |
  kcat -P -b "$BOOTSTRAP" -t "$TOPIC" -k "$ID" \
    -H 'content-type=application/json; schema=io.fleet.WorkflowSubmitted' \
    -X partitioner=murmur2_random
echo "submitted $ID"
