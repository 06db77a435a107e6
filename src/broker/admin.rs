//! Topic administration (`oms migrate`) and metadata look-ups.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::{METADATA_TIMEOUT, client_config};
use crate::config::{BrokerSettings, MigrateSettings};

/// A topic administration failure.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach the broker at {bootstrap}")]
    Unreachable {
        bootstrap: String,
        #[source]
        source: KafkaError,
    },
    #[error("broker refused to create topic {topic}: {code}")]
    Create {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("topic {0} does not exist (run `oms migrate` first)")]
    MissingTopic(String),
    #[error("the metadata request's worker thread failed (a bug; please report it)")]
    Task(#[source] tokio::task::JoinError),
    #[error("the broker answers metadata but not {what}")]
    NotServing {
        /// What it did not serve, and where.
        what: String,
        #[source]
        source: KafkaError,
    },
}

/// What `oms migrate` did to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    /// It was there: its partition count is the one it was created with
    /// (`migrate.partitions` applies only when a topic is created).
    AlreadyExisted {
        partitions: usize,
    },
}

/// Creates the orders, dead-letter and trades topics as `[migrate]`'s
/// defaults say; existing topics are left alone.
pub async fn create_topics(
    settings: &BrokerSettings,
) -> Result<Vec<(String, TopicOutcome)>, AdminError> {
    create_topics_with(settings, &MigrateSettings::default()).await
}

/// Creates the topics with `migrate`'s partitions and replication;
/// existing topics are left alone.
pub async fn create_topics_with(
    settings: &BrokerSettings,
    migrate: &MigrateSettings,
) -> Result<Vec<(String, TopicOutcome)>, AdminError> {
    let admin: AdminClient<DefaultClientContext> = client_config(settings, "oms-admin")
        .create()
        .map_err(|source| unreachable(settings, source))?;
    let topics = [
        NewTopic::new(
            &settings.topic,
            migrate.partitions,
            TopicReplication::Fixed(migrate.replication),
        ),
        NewTopic::new(
            &settings.dlq_topic,
            1,
            TopicReplication::Fixed(migrate.replication),
        ),
        NewTopic::new(
            &settings.trades_topic,
            migrate.partitions,
            TopicReplication::Fixed(migrate.replication),
        ),
    ];
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&topics, &options)
        .await
        .map_err(|source| unreachable(settings, source))?;
    results
        .into_iter()
        .map(|result| match result {
            Ok(topic) => Ok((topic, TopicOutcome::Created)),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                let partitions = partitions(admin.inner(), settings, &topic)?.len();
                Ok((topic, TopicOutcome::AlreadyExisted { partitions }))
            }
            Err((topic, code)) => Err(AdminError::Create { topic, code }),
        })
        .collect()
}

fn unreachable(settings: &BrokerSettings, source: KafkaError) -> AdminError {
    AdminError::Unreachable {
        bootstrap: settings.bootstrap.clone(),
        source,
    }
}

/// The partition ids of `topic`, read from broker metadata by any client
/// (a consumer's, or the admin client that just tried to create it).
pub fn partitions<C: ClientContext>(
    client: &Client<C>,
    settings: &BrokerSettings,
    topic: &str,
) -> Result<Vec<i32>, AdminError> {
    let metadata = client
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|source| unreachable(settings, source))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(AdminError::MissingTopic(topic.to_owned()));
    }
    Ok(partitions)
}

/// [`partitions`] off the async workers (a metadata request blocks), by a
/// client the caller keeps for it.
pub async fn partitions_of(
    client: std::sync::Arc<BaseConsumer>,
    settings: &BrokerSettings,
) -> Result<Vec<i32>, AdminError> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || partitions(client.client(), &settings, &settings.topic))
        .await
        .unwrap_or_else(|e| Err(AdminError::Task(e)))
}

/// The id the broker gave `topic` when it was created — a topic deleted
/// and created again, or one on a broker that restarted without its log
/// (tansu `memory://`), has another. `None`: the broker names no id (an
/// all-zero one) or does not know the topic. rust-rdkafka does not wrap
/// librdkafka's `DescribeTopics`, so this calls it directly.
pub fn topic_id<C: ClientContext>(
    client: &Client<C>,
    settings: &BrokerSettings,
    topic: &str,
) -> Result<Option<String>, AdminError> {
    use rdkafka::bindings as rd;
    use std::ffi::{CStr, CString};
    let name = CString::new(topic).map_err(|_| AdminError::MissingTopic(topic.to_owned()))?;
    let timeout_ms = i32::try_from(METADATA_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
    let rk = client.native_ptr();
    // SAFETY: every handle made here is destroyed here, after its last
    // use; `rk` outlives the call (borrowed from `client`); the strings
    // librdkafka returns are copied before the event that owns them is
    // destroyed; a null result (no event within the timeout) is checked.
    unsafe {
        let queue = rd::rd_kafka_queue_new(rk);
        let names = [name.as_ptr()];
        let collection = rd::rd_kafka_TopicCollection_of_topic_names(names.as_ptr().cast_mut(), 1);
        let options = rd::rd_kafka_AdminOptions_new(
            rk,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
        );
        rd::rd_kafka_DescribeTopics(rk, collection, options, queue);
        let event = rd::rd_kafka_queue_poll(queue, timeout_ms + 1_000);
        let answer = if event.is_null() {
            Err(RDKafkaErrorCode::OperationTimedOut)
        } else {
            let code = rd::rd_kafka_event_error(event);
            let result = rd::rd_kafka_event_DescribeTopics_result(event);
            if code != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || result.is_null() {
                Err(RDKafkaErrorCode::from(code))
            } else {
                let mut count = 0;
                let topics = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
                let described = (count > 0 && !topics.is_null()).then(|| *topics);
                Ok(described.and_then(|d| {
                    if !rd::rd_kafka_TopicDescription_error(d).is_null() {
                        return None;
                    }
                    let id = rd::rd_kafka_TopicDescription_topic_id(d);
                    let zero = id.is_null()
                        || (rd::rd_kafka_Uuid_most_significant_bits(id) == 0
                            && rd::rd_kafka_Uuid_least_significant_bits(id) == 0);
                    (!zero).then(|| {
                        CStr::from_ptr(rd::rd_kafka_Uuid_base64str(id))
                            .to_string_lossy()
                            .into_owned()
                    })
                }))
            }
        };
        if !event.is_null() {
            rd::rd_kafka_event_destroy(event);
        }
        rd::rd_kafka_AdminOptions_destroy(options);
        rd::rd_kafka_TopicCollection_destroy(collection);
        rd::rd_kafka_queue_destroy(queue);
        answer.map_err(|code| AdminError::NotServing {
            what: format!("the id of topic {topic} at {}", settings.bootstrap),
            source: KafkaError::AdminOp(code),
        })
    }
}

/// The orders topic's log as the broker sees it: `(partition, low, high)`
/// for each partition (the one reading of watermarks: `oms probe`, the
/// lag reporter and the group check use it).
pub fn watermarks(
    client: &BaseConsumer,
    settings: &BrokerSettings,
) -> Result<Vec<(i32, i64, i64)>, AdminError> {
    let topic = &settings.topic;
    partitions(client.client(), settings, topic)?
        .into_iter()
        .map(|p| {
            client
                .fetch_watermarks(topic, p, METADATA_TIMEOUT)
                .map(|(low, high)| (p, low, high))
                .map_err(|source| AdminError::NotServing {
                    what: format!("the log end of {topic}/{p} at {}", settings.bootstrap),
                    source,
                })
        })
        .collect()
}

/// Does the broker serve? Metadata first, then the log end of every
/// partition of the orders topic (when it exists): a broker whose storage
/// failed can still accept connections. `oms probe` and the `just up`
/// broker supervisor ask this. Returns a one-line summary.
pub fn probe(settings: &BrokerSettings) -> Result<String, AdminError> {
    let consumer: BaseConsumer = client_config(settings, "oms-probe")
        .create()
        .map_err(|source| unreachable(settings, source))?;
    let marks = match watermarks(&consumer, settings) {
        Ok(marks) => marks,
        Err(AdminError::MissingTopic(_)) => {
            return Ok(format!(
                "{} serves metadata (no topic {} yet)",
                settings.bootstrap, settings.topic
            ));
        }
        Err(err) => return Err(err),
    };
    let records: i64 = marks.iter().map(|(_, low, high)| high - low).sum();
    let partitions = marks;
    Ok(format!(
        "{} serves {} ({} partitions, {records} records)",
        settings.bootstrap,
        settings.topic,
        partitions.len()
    ))
}
