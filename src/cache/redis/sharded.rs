//! The sharded pub/sub subscriber (`SSUBSCRIBE`, Redis ≥ 7), on a blocking connection of its
//! own.
//!
//! Why a thread and a blocking connection: the redis crate's async pub/sub knows `SUBSCRIBE`
//! and `PSUBSCRIBE` only (its `ssubscribe` lives in its cluster client, which this module does
//! not use; see the parent module), while its blocking `Connection` can send any command and
//! read any reply, with the same credentials and TLS settings. One thread per subscription,
//! which the listener holds for as long as the subscription lives; it reads with a one-second
//! timeout so that it notices a dropped receiver.

use std::time::Duration;

use redis::{Client, ConnectionInfo, ProtocolVersion, PushKind, Value};
use tokio::sync::{mpsc, oneshot};

/// How often the thread wakes to see whether its receiver is gone.
const POLL: Duration = Duration::from_secs(1);

/// Subscribes to `channels` on the server at `info`, says so (or why not) on `ready`, then
/// forwards every `smessage` as `(channel, message)` until the connection fails or `messages`'
/// receiver is dropped. A slot that moves away (the server then sends `sunsubscribe`, which
/// this loop does not see) is noticed by the listener instead, from the slot map
/// (`RedisClient::serves`).
///
/// RESP3, and messages read through the crate's `PubSub::get_message`: its plain
/// `recv_response` takes a read timeout for a reply that will come late and skips the next
/// message for each one, which lost a purge per idle second.
pub(super) fn listen(
    info: &ConnectionInfo,
    channels: &[String],
    (connect_timeout, response_timeout): (Duration, Duration),
    ready: oneshot::Sender<Result<(), String>>,
    messages: &mpsc::UnboundedSender<(String, String)>,
) {
    let mut conn = match subscribe(info, channels, connect_timeout, response_timeout) {
        Ok(conn) => conn,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let mut pubsub = conn.as_pubsub();
    if pubsub.set_read_timeout(Some(POLL)).is_err() || ready.send(Ok(())).is_err() {
        return;
    }
    loop {
        match pubsub.get_message() {
            Ok(msg) => {
                let (channel, payload) = (msg.get_channel_name().to_owned(), msg.get_payload::<String>());
                if let Ok(payload) = payload
                    && messages.send((channel, payload)).is_err()
                {
                    return;
                }
            }
            Err(e) if e.is_timeout() => {
                if messages.is_closed() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// A RESP3 connection subscribed to `channels`: every confirmation read.
fn subscribe(
    info: &ConnectionInfo,
    channels: &[String],
    connect_timeout: Duration,
    response_timeout: Duration,
) -> redis::RedisResult<redis::Connection> {
    let resp3 = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    let info = info.clone().set_redis_settings(resp3);
    let mut conn = Client::open(info)?.get_connection_with_timeout(connect_timeout)?;
    conn.set_read_timeout(Some(response_timeout))?;
    conn.set_write_timeout(Some(response_timeout))?;
    let cmd = redis::cmd("SSUBSCRIBE").arg(channels).get_packed_command();
    conn.send_packed_command(&cmd)?;
    for _ in channels {
        let reply = conn.recv_response()?;
        if !confirms(&reply) {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "unexpected answer to SSUBSCRIBE",
                format!("{reply:?}"),
            )));
        }
    }
    Ok(conn)
}

/// Whether `reply` confirms a sharded subscription.
fn confirms(reply: &Value) -> bool {
    matches!(
        reply,
        Value::Push {
            kind: PushKind::SSubscribe,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_sharded_subscription_confirms_one() {
        let push = |kind| Value::Push {
            kind,
            data: vec![Value::BulkString(b"{p:bus}:invalidate".to_vec()), Value::Int(1)],
        };
        assert!(confirms(&push(PushKind::SSubscribe)));
        assert!(!confirms(&push(PushKind::Subscribe)));
        assert!(!confirms(&Value::SimpleString("OK".to_owned())));
    }
}
