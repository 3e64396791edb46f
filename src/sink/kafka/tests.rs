//! The Kafka sink's pure parts: messages, parts, failure kinds, delivery accounting, settings.
//! The broker-facing behaviour is tested against a real broker in `tests/it/kafka.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode as C;

use super::config::{KafkaConfig, Scalar};
use super::deliver::{Destination, Failure, InFlight, Tag};
use super::message::{Encoding, Message, split, value};
use crate::assemble::ReleaseReason;
use crate::model::{AssembledTrace, TraceId};
use crate::otlp::ExportTraceServiceRequest;
use crate::testkit::{assembled, kv, resource_spans, span};

const TRACE: [u8; 16] = [3; 16];

/// A client span and a server span with a large, unicode input.
fn trace(input_bytes: usize) -> AssembledTrace {
    let mut root = span(TRACE, [1; 8], &[], "client-root");
    root.attributes = vec![kv(
        "mlflow.spanInputs",
        &format!("\"{}\"", "ü".repeat(input_bytes / 2)),
    )];
    let child = span(TRACE, [2; 8], &[1; 8], "server-handler");
    assembled(
        TraceId(TRACE),
        vec![
            resource_spans("client", vec![root]),
            resource_spans("server", vec![child]),
        ],
        2,
        ReleaseReason::Complete,
    )
}

#[test]
fn split_cuts_exact_slices_that_join_to_the_value() {
    let value = Bytes::from((0..=255u8).cycle().take(2500).collect::<Vec<_>>());
    let parts = split(value.clone(), 1000);
    assert_eq!(
        parts.iter().map(Bytes::len).collect::<Vec<_>>(),
        [1000, 1000, 500]
    );
    assert_eq!(parts.concat(), value.to_vec());
    assert_eq!(split(value.clone(), 2500).len(), 1);
    assert_eq!(split(Bytes::new(), 10), [Bytes::new()]);
}

#[test]
fn message_is_keyed_by_mlflow_trace_id_with_descriptive_headers() {
    let t = trace(100);
    let m = Message::new(&t, Encoding::MlflowJson, 1_000_000);
    let id = format!("tr-{}", "03".repeat(16));
    assert_eq!(m.key, id);
    assert_eq!(m.parts.len(), 1);
    let headers: Vec<_> = m.part_headers(0).collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("content-type"), Some("application/json"));
    assert_eq!(get("encoding"), Some("mlflow-json"));
    assert_eq!(get("trace_id"), Some(id.as_str()));
    assert_eq!(get("revision"), Some("2"));
    assert_eq!(get("experiment_id"), Some("0"));
    assert_eq!(get("span_count"), Some("2"));
    assert_eq!(get("partial"), Some("false"));
    assert_eq!(get("part"), None, "an unsplit message has no part header");
}

#[test]
fn large_trace_is_split_into_numbered_parts_under_the_limit() {
    let t = trace(50_000);
    let m = Message::new(&t, Encoding::MlflowJson, 16_384);
    assert!(m.parts.len() >= 4, "{} parts", m.parts.len());
    for (i, part) in m.parts.iter().enumerate() {
        let headers: Vec<_> = m.part_headers(i).collect();
        let header_bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(part.len() + header_bytes + m.key.len() <= 16_384);
        assert!(headers.contains(&("part", (i + 1).to_string())));
        assert!(headers.contains(&("parts", m.parts.len().to_string())));
    }
    let joined: serde_json::Value = serde_json::from_slice(&m.parts.concat()).unwrap();
    assert_eq!(joined, serde_json::to_value(&t.trace).unwrap());
}

#[test]
fn mlflow_json_value_is_the_trace_to_dict_json() {
    let t = trace(10);
    assert_eq!(
        value(&t, Encoding::MlflowJson),
        serde_json::to_vec(&t.trace).unwrap()
    );
}

#[test]
fn otlp_values_hold_every_span_with_its_resource() {
    let t = trace(10);
    let request = ExportTraceServiceRequest::decode(&value(&t, Encoding::OtlpProto)[..]).unwrap();
    let services: Vec<_> = request
        .resource_spans
        .iter()
        .map(|rs| crate::testkit::service_name(rs).unwrap())
        .collect();
    assert_eq!(services, ["client", "server"]);
    let names: Vec<_> = request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| String::from_utf8_lossy(&s.name).into_owned())
        .collect();
    assert_eq!(names, ["client-root", "server-handler"]);

    let json: serde_json::Value = serde_json::from_slice(&value(&t, Encoding::OtlpJson)).unwrap();
    let spans = &json["resourceSpans"][1]["scopeSpans"][0]["spans"][0];
    assert_eq!(spans["name"], "server-handler");
    assert_eq!(spans["traceId"], "03".repeat(16));
    assert_eq!(spans["parentSpanId"], "01".repeat(8));
}

#[test]
fn failures_are_classified_by_what_retrying_can_fix() {
    for (code, expected) in [
        (C::MessageTimedOut, Failure::Transient("timeout")),
        (C::AllBrokersDown, Failure::Transient("transport")),
        (C::NotLeaderForPartition, Failure::Transient("other")),
        (C::MessageSizeTooLarge, Failure::Permanent("too_large")),
        (
            C::UnknownTopicOrPartition,
            Failure::Permanent("unknown_topic"),
        ),
        (
            C::TopicAuthorizationFailed,
            Failure::Permanent("authorization"),
        ),
        (C::Fatal, Failure::Fatal),
        (C::ProducerFenced, Failure::Fatal),
        (C::UnknownProducerId, Failure::Fatal),
    ] {
        let error = KafkaError::MessageProduction(code);
        assert_eq!(Failure::of(&error), expected, "{code:?}");
    }
}

fn message(parts: usize, bytes_each: usize) -> Arc<Message> {
    Arc::new(Message {
        key: "tr-1".into(),
        headers: Vec::new(),
        parts: vec![Bytes::from(vec![0; bytes_each]); parts],
        position: 0,
    })
}

fn tag(id: u64, part: usize) -> Tag {
    Tag {
        generation: 0,
        id,
        part,
    }
}

#[test]
fn a_revision_is_delivered_once_every_part_is_acknowledged_once() {
    let mut f = InFlight::default();
    let id = f.insert(message(3, 10), 4, Destination::Topic);
    assert_eq!((f.bytes(), f.messages()), (30, 3));
    assert!(f.acked(id, 0).is_none());
    assert!(f.acked(id, 0).is_none(), "a repeated ack counts once");
    assert!(f.acked(id, 2).is_none());
    assert_eq!(f.messages(), 1);
    let out = f.acked(id, 1).expect("all parts acknowledged");
    assert_eq!(out.spans, 4);
    assert!(f.is_empty());
    assert_eq!((f.bytes(), f.messages()), (0, 0));
    assert!(
        f.acked(id, 1).is_none(),
        "late reports of a finished revision"
    );
}

#[test]
fn retries_back_off_exponentially_and_skip_removed_revisions() {
    let mut f = InFlight::default();
    let a = f.insert(message(2, 1), 1, Destination::Topic);
    let b = f.insert(message(1, 1), 1, Destination::Topic);
    let now = Instant::now();
    f.retry_later(tag(a, 1), now);
    assert_eq!(f.next_retry(), Some(now + Duration::from_millis(100)));
    assert_eq!(f.due(now + Duration::from_millis(99)), []);
    assert_eq!(f.due(now + Duration::from_millis(100)), [tag(a, 1)]);
    f.retry_later(tag(a, 1), now);
    f.retry_later(tag(a, 1), now);
    assert_eq!(f.next_retry(), Some(now + Duration::from_millis(200)));
    for _ in 0..20 {
        f.retry_later(tag(b, 0), now);
    }
    assert!(f.due(now + Duration::from_secs(10)).contains(&tag(b, 0)));
    f.retry_later(tag(b, 0), now);
    f.remove(b);
    assert_eq!(f.due(now + Duration::from_secs(60)), []);
    assert_eq!(f.unacked(), [(a, 0), (a, 1)]);
}

fn kafka_config(yaml: &str) -> KafkaConfig {
    serde_saphyr::from_str(yaml).unwrap()
}

#[test]
fn defaults_are_the_safe_ones_and_overrides_come_last() {
    let c = kafka_config("brokers: k:9092\ntopic: t\nlibrdkafka:\n  linger.ms: 50\n  acks: 1\n");
    assert_eq!(c.encoding, Encoding::MlflowJson);
    let client = c.client_config().unwrap();
    assert_eq!(client.get("enable.idempotence"), Some("true"));
    assert_eq!(client.get("compression.type"), Some("zstd"));
    assert_eq!(client.get("partitioner"), Some("murmur2_random"));
    assert_eq!(client.get("message.max.bytes"), Some("1000000"));
    assert_eq!(client.get("linger.ms"), Some("50"));
    assert_eq!(client.get("acks"), Some("1"));
    assert_eq!(c.librdkafka["acks"], Scalar::Int(1));
}

#[test]
fn security_settings_map_to_librdkafka_properties() {
    let c = kafka_config(
        "brokers: k:9093\ntopic: t\nsecurity:\n  protocol: sasl_ssl\n  sasl:\n    mechanism: SCRAM-SHA-512\n    username: u\n    password: p\n  tls:\n    ca_file: /etc/ca.pem\n    verify_hostname: false\n",
    );
    let client = c.client_config().unwrap();
    assert_eq!(client.get("security.protocol"), Some("sasl_ssl"));
    assert_eq!(client.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
    assert_eq!(client.get("sasl.username"), Some("u"));
    assert_eq!(client.get("ssl.ca.location"), Some("/etc/ca.pem"));
    assert_eq!(
        client.get("ssl.endpoint.identification.algorithm"),
        Some("none")
    );
}

#[test]
fn overriding_delivery_reports_is_refused() {
    let c = kafka_config(
        "brokers: k:9092\ntopic: t\nlibrdkafka:\n  delivery.report.only.error: true\n",
    );
    let e = c.client_config().unwrap_err().to_string();
    assert!(e.contains("delivery.report.only.error"), "{e}");
}
