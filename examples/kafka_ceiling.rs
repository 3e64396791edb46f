//! The Kafka sink's ceiling on this machine: how many spans per second librdkafka alone carries
//! into a broker with the sink's producer settings (`KafkaConfig::client_config`) and its
//! messages (`Message::new`: key, headers, value), with nothing else of traceloom running. No
//! pipeline that produces these messages can be faster than this on the same core.
//!
//!   taskset -c 1 cargo run --release --example kafka_ceiling -- \
//!       --brokers 127.0.0.1:19092 --encoding mlflow-json --compression zstd
//!
//! Messages are built before the clock starts (8-span GenAI traces with ~1 KiB of chat messages
//! per span, as `benches/kafka.rs`); the clock stops at the last delivery report.

use std::time::{Duration, Instant};

use clap::Parser;
use common::cpu_seconds;
use rdkafka::ClientContext;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use traceloom::sink::kafka::config::KafkaConfig;
use traceloom::sink::kafka::message::{Message, kafka_headers};
use traceloom::sink::kafka::topic;
use traceloom::testkit;

mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Bootstrap brokers.
    #[arg(long, default_value = "127.0.0.1:19092")]
    brokers: String,
    /// `encoding`, as in the pipeline file.
    #[arg(long, default_value = "mlflow-json")]
    encoding: String,
    /// `compression`, as in the pipeline file.
    #[arg(long, default_value = "zstd")]
    compression: String,
    /// `compression_level`, as in the pipeline file (the codec's default when absent).
    #[arg(long)]
    compression_level: Option<i32>,
    /// Messages (one 8-span trace each) to send.
    #[arg(long, default_value_t = 40_000)]
    traces: usize,
}

/// Counts delivery reports; librdkafka calls it on its own polling thread.
#[derive(Default)]
struct Count {
    ok: std::sync::atomic::AtomicUsize,
    failed: std::sync::atomic::AtomicUsize,
}

impl ClientContext for Count {}

impl ProducerContext for Count {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = if result.is_ok() {
            &self.ok
        } else {
            &self.failed
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

const SPANS_PER_TRACE: usize = 8;
/// Distinct traces built; the run cycles through them.
const DISTINCT: usize = 512;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let topic_name = format!("ceiling-{}", std::process::id());
    let mut config: KafkaConfig = serde_saphyr::from_str(&format!(
        "{{brokers: '{}', topic: {topic_name}, encoding: {}, compression: {}, \
         create_topic: {{partitions: 6}}}}",
        args.brokers, args.encoding, args.compression
    ))?;
    config.compression_level = args.compression_level;
    let client = config.client_config()?;
    topic::prepare(&client, &topic_name, config.create_topic.as_ref()).await?;
    let messages: Vec<Message> = testkit::genai_traces(DISTINCT, SPANS_PER_TRACE, 1000)
        .iter()
        .map(|t| Message::new(t, config.encoding, config.max_message_size.0 as usize))
        .collect();
    let value_bytes: usize = messages.iter().map(Message::value_len).sum();
    let producer: ThreadedProducer<Count> = client.create_with_context(Count::default())?;

    let (start, cpu) = (Instant::now(), cpu_seconds());
    for message in messages.iter().cycle().take(args.traces) {
        let mut record = BaseRecord::to(&topic_name)
            .key(message.key.as_bytes())
            .payload(&message.parts[0][..])
            .headers(kafka_headers(message.part_headers(0)));
        // A full local queue is the producer's back-pressure: wait for room, as the sink does.
        while let Err((_, back)) = producer.send(record) {
            record = back;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let (wall, cpu) = (start.elapsed().as_secs_f64(), cpu_seconds() - cpu);

    let context = producer.context();
    let ok = context.ok.load(std::sync::atomic::Ordering::Relaxed);
    let failed = context.failed.load(std::sync::atomic::Ordering::Relaxed);
    let spans = (ok * SPANS_PER_TRACE) as f64;
    println!(
        "{} + {} (level {:?}): {ok} messages acknowledged, {failed} failed, in {wall:.2} s: {:.0} spans/s, \
         {:.0} MB/s of values ({} bytes per span); producer CPU {cpu:.2} s = {:.2} us/span",
        args.encoding,
        args.compression,
        args.compression_level,
        spans / wall,
        (ok * value_bytes / DISTINCT) as f64 / wall / 1e6,
        value_bytes / (DISTINCT * SPANS_PER_TRACE),
        cpu * 1e6 / spans,
    );
    anyhow::ensure!(failed == 0, "{failed} messages were not delivered");
    Ok(())
}
