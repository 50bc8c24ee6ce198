// Submit a workflow to fleet from Java: a JSON WorkflowSubmitted on <prefix>workflow.requests,
// produced with the plain Kafka client and a StringSerializer (no Avro, no fleet code).
//
//   java -cp "kafka-clients-4.2.1.jar:slf4j-api-1.7.36.jar:lz4-java-1.10.1.jar" \
//       SubmitWorkflow.java localhost:9092 fleet.workflow.requests wf-java-1
//
// Then `fleet tail --workflow wf-java-1` shows it run. See docs/json-requests.md.

import java.nio.charset.StandardCharsets;
import java.util.Properties;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.StringSerializer;

public class SubmitWorkflow {
    public static void main(String[] args) throws Exception {
        String bootstrap = args.length > 0 ? args[0] : "localhost:9092";
        String topic = args.length > 1 ? args[1] : "fleet.workflow.requests";
        String workflowId = args.length > 2 ? args[2] : "wf-java-" + System.currentTimeMillis();

        // The spec goes in as JSON ("spec"), or as JSON text in "spec_json".
        String request = """
            {"workflow_id": "%s",
             "submitted_at_ms": %d,
             "submitted_by": "billing-service",
             "spec": {"name": "hello-from-java",
                      "input": {"text": "three little words"},
                      "steps": [{"id": "count", "capability": "text.wordcount",
                                 "input": {"text": "$.input.text"}}],
                      "output": "$.steps.count.output"}}
            """.formatted(workflowId, System.currentTimeMillis());

        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.ACKS_CONFIG, "all");

        try (KafkaProducer<String, String> producer = new KafkaProducer<>(props)) {
            // Key = workflow id: the Java client's default partitioner (murmur2) puts the
            // request on the partition that also gets the workflow's results.
            ProducerRecord<String, String> record = new ProducerRecord<>(topic, workflowId, request);
            // Optional: without it the orchestrator tells JSON by its leading '{' and the
            // message type by its fields.
            record.headers().add("content-type",
                "application/json; schema=io.fleet.WorkflowSubmitted".getBytes(StandardCharsets.UTF_8));
            RecordMetadata sent = producer.send(record).get();
            System.out.printf("submitted %s to %s partition %d offset %d%n",
                workflowId, sent.topic(), sent.partition(), sent.offset());
        }
    }
}
