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

use redis::{Client, ConnectionInfo, Value};
use tokio::sync::{mpsc, oneshot};

/// How often the thread wakes to see whether its receiver is gone.
const POLL: Duration = Duration::from_secs(1);

/// Subscribes to `channels` on the server at `info`, says so (or why not) on `ready`, then
/// forwards every `smessage` as `(channel, message)` until the connection fails, the server
/// drops the subscription (`sunsubscribe`: the slot moved), or `messages`' receiver is dropped.
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
    if ready.send(Ok(())).is_err() || conn.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    loop {
        match conn.recv_response() {
            Ok(reply) => match Push::of(&reply) {
                Push::Message(channel, message) => {
                    if messages.send((channel, message)).is_err() {
                        return;
                    }
                }
                Push::Unsubscribed => return,
                Push::Other => {}
            },
            Err(e) if e.is_timeout() => {
                if messages.is_closed() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// A connection subscribed to `channels`: every confirmation read.
fn subscribe(
    info: &ConnectionInfo,
    channels: &[String],
    connect_timeout: Duration,
    response_timeout: Duration,
) -> redis::RedisResult<redis::Connection> {
    let mut conn = Client::open(info.clone())?.get_connection_with_timeout(connect_timeout)?;
    conn.set_read_timeout(Some(response_timeout))?;
    conn.set_write_timeout(Some(response_timeout))?;
    let cmd = redis::cmd("SSUBSCRIBE").arg(channels).get_packed_command();
    conn.send_packed_command(&cmd)?;
    for _ in channels {
        let reply = conn.recv_response()?;
        if !matches!(Push::kind(&reply).as_deref(), Some("ssubscribe")) {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "unexpected answer to SSUBSCRIBE",
                format!("{reply:?}"),
            )));
        }
    }
    Ok(conn)
}

/// What a reply on a subscribed connection is.
enum Push {
    /// `smessage <channel> <message>`.
    Message(String, String),
    /// `sunsubscribe`: the server dropped the subscription (its slot moved to another shard).
    Unsubscribed,
    /// Anything else (a late confirmation, a pong).
    Other,
}

impl Push {
    fn of(reply: &Value) -> Push {
        let parts = match reply {
            Value::Array(parts) | Value::Push { data: parts, .. } => parts,
            _ => return Push::Other,
        };
        match Self::kind(reply).as_deref() {
            Some("smessage") => match (parts.get(1).and_then(text), parts.get(2).and_then(text)) {
                (Some(channel), Some(message)) => Push::Message(channel, message),
                _ => Push::Other,
            },
            Some("sunsubscribe") => Push::Unsubscribed,
            _ => Push::Other,
        }
    }

    /// The reply's first element, lowercased (`smessage`, `ssubscribe`, …).
    fn kind(reply: &Value) -> Option<String> {
        match reply {
            Value::Array(parts) => parts.first().and_then(text).map(|k| k.to_ascii_lowercase()),
            Value::Push { kind, .. } => Some(kind.to_string().to_ascii_lowercase()),
            _ => None,
        }
    }
}

/// A bulk or simple string as text.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn replies_on_a_sharded_subscription_are_read_as_what_they_are() {
        let message = Value::Array(vec![
            bulk("smessage"),
            bulk("{p:bus}:invalidate"),
            bulk("hard\nx\nk"),
        ]);
        assert!(
            matches!(Push::of(&message), Push::Message(c, m) if c == "{p:bus}:invalidate" && m == "hard\nx\nk")
        );
        let moved = Value::Array(vec![
            bulk("sunsubscribe"),
            bulk("{p:bus}:invalidate"),
            Value::Int(0),
        ]);
        assert!(matches!(Push::of(&moved), Push::Unsubscribed));
        let confirmed = Value::Array(vec![bulk("ssubscribe"), bulk("{p:bus}:filled"), Value::Int(2)]);
        assert!(matches!(Push::of(&confirmed), Push::Other));
        assert_eq!(Push::kind(&confirmed).as_deref(), Some("ssubscribe"));
        assert!(matches!(Push::of(&Value::Nil), Push::Other));
    }
}
