//! Topic setup at start: check the topic exists (or create it when asked), and learn the largest
//! message it takes.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::config::CreateTopic;

/// How long one attempt to reach the brokers may take.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the topic is not ready.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// No broker answered; worth trying again.
    #[error("no broker answered ({0})")]
    Unreachable(KafkaError),
    /// The topic does not exist and `create_topic` is not set.
    #[error(
        "topic `{0}` does not exist; create it, or set `create_topic` so that traceloom creates it"
    )]
    Missing(String),
    /// The broker refused to create the topic.
    #[error("cannot create topic `{topic}`: {code}")]
    Create {
        /// The topic.
        topic: String,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
}

/// The topic's facts learned at setup.
#[derive(Clone, Copy, Debug)]
pub struct TopicFacts {
    /// The topic's `max.message.bytes`, when the broker reports it.
    pub max_message_bytes: Option<usize>,
}

/// Makes sure `topic` exists, creating it when `create` is set.
///
/// # Errors
///
/// [`TopicError`]; only [`TopicError::Unreachable`] is worth retrying.
pub async fn prepare(
    config: &ClientConfig,
    topic: &str,
    create: Option<&CreateTopic>,
) -> Result<TopicFacts, TopicError> {
    let admin: Arc<AdminClient<DefaultClientContext>> =
        Arc::new(config.create().map_err(TopicError::Unreachable)?);
    if !exists(&admin, topic).await? {
        let Some(create) = create else {
            return Err(TopicError::Missing(topic.to_string()));
        };
        self::create(&admin, topic, create).await?;
    }
    Ok(TopicFacts {
        max_message_bytes: max_message_bytes(&admin, topic).await,
    })
}

async fn exists(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    topic: &str,
) -> Result<bool, TopicError> {
    let admin = Arc::clone(admin);
    let name = topic.to_string();
    let metadata = tokio::task::spawn_blocking(move || {
        admin.inner().fetch_metadata(Some(&name), METADATA_TIMEOUT)
    })
    .await
    // Cancelled only when the runtime shuts down.
    .unwrap_or(Err(KafkaError::Canceled))
    .map_err(TopicError::Unreachable)?;
    Ok(metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
}

async fn create(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    create: &CreateTopic,
) -> Result<(), TopicError> {
    let configs: Vec<(String, String)> = create
        .config
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    let new = configs.iter().fold(
        NewTopic::new(
            topic,
            create.partitions,
            TopicReplication::Fixed(create.replication_factor),
        ),
        |t, (k, v)| t.set(k, v),
    );
    let options = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
    let results = admin
        .create_topics([&new], &options)
        .await
        .map_err(TopicError::Unreachable)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(TopicError::Create { topic: name, code }),
        }
    }
    tracing::info!(topic, partitions = create.partitions, "created the topic");
    Ok(())
}

/// The topic's `max.message.bytes`; `None` when the broker does not answer DescribeConfigs.
async fn max_message_bytes(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> Option<usize> {
    let options = AdminOptions::new().request_timeout(Some(METADATA_TIMEOUT));
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
        .await
        .ok()?;
    let resource = results.into_iter().next()?.ok()?;
    resource
        .get("max.message.bytes")?
        .value
        .as_deref()?
        .parse()
        .ok()
}
