//! Purges that reach every replica: the message one replica publishes on Redis, and the
//! listener through which each replica applies the others' purges to its own tiers (and wakes its
//! fleet-lock waiters, whose messages share the connection).

use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Fleet;
use crate::cache::ReadThrough;
use crate::cache::tier::redis::{Channel, RedisTier};
use crate::origin::Origin;

/// What a purge does to an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeMode {
    /// The entry is removed: the next request fetches.
    Hard,
    /// The entry is marked stale: the next request is served at once and refreshes it.
    Soft,
}

impl PurgeMode {
    /// Every mode, for label sets registered at zero.
    pub const ALL: [PurgeMode; 2] = [PurgeMode::Hard, PurgeMode::Soft];

    /// The `mode` label, and the mode's word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            PurgeMode::Hard => "hard",
            PurgeMode::Soft => "soft",
        }
    }

    /// The mode [`PurgeMode::as_str`] names.
    pub fn parse(word: &str) -> Option<Self> {
        PurgeMode::ALL.into_iter().find(|m| m.as_str() == word)
    }
}

/// Where a purge applied here came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeSource {
    /// A `DELETE` this replica took.
    Local,
    /// Another replica's message.
    Remote,
}

impl PurgeSource {
    /// Every source, for label sets registered at zero.
    pub const ALL: [PurgeSource; 2] = [PurgeSource::Local, PurgeSource::Remote];

    /// The `source` label.
    pub fn as_str(self) -> &'static str {
        match self {
            PurgeSource::Local => "local",
            PurgeSource::Remote => "remote",
        }
    }
}

/// What a purge is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One key.
    Key(String),
    /// Every entry carrying exactly this tag.
    Tag(String),
}

impl Target {
    /// The key or the tag.
    pub fn name(&self) -> &str {
        match self {
            Target::Key(name) | Target::Tag(name) => name,
        }
    }

    /// The purge's `scope` label: `key` or `tag`.
    pub fn scope(&self) -> PurgeScope {
        match self {
            Target::Key(_) => PurgeScope::Key,
            Target::Tag(_) => PurgeScope::Tag,
        }
    }
}

/// What a purge names: one key, or every entry with a tag (`scope` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeScope {
    /// `DELETE /items/{key}`.
    Key,
    /// `DELETE /tags/{tag}`.
    Tag,
}

impl PurgeScope {
    /// Every scope, for label sets registered at zero.
    pub const ALL: [PurgeScope; 2] = [PurgeScope::Key, PurgeScope::Tag];

    /// The `scope` label.
    pub fn as_str(self) -> &'static str {
        match self {
            PurgeScope::Key => "key",
            PurgeScope::Tag => "tag",
        }
    }

    /// The scope [`PurgeScope::as_str`] names.
    pub fn parse(word: &str) -> Option<Self> {
        PurgeScope::ALL.into_iter().find(|s| s.as_str() == word)
    }
}

/// A purge as replicas tell each other about it.
///
/// On the wire: `mode\ninstance\nkey`, the format every release so far has spoken, so replicas
/// of different releases purge each other's keys during a rolling upgrade; a tag purge's mode is
/// `hard-tag` or `soft-tag`, which releases without tags ignore (or, before 0.2, read as a key
/// purge of a key named like the tag: one needless miss at most).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    /// Remove, or mark stale.
    pub mode: PurgeMode,
    /// The replica that took the purge: it skips its own message.
    pub origin_instance: String,
    /// What to purge.
    pub target: Target,
}

impl Invalidation {
    /// The message published on the invalidation channel.
    pub fn encode(&self) -> String {
        let (suffix, name) = match &self.target {
            Target::Key(key) => ("", key),
            Target::Tag(tag) => ("-tag", tag),
        };
        format!("{}{suffix}\n{}\n{name}", self.mode.as_str(), self.origin_instance)
    }

    /// A message read from the channel; `None` for one this release does not understand (it is
    /// ignored, not guessed at).
    pub fn parse(message: &str) -> Option<Self> {
        let mut parts = message.splitn(3, '\n');
        let (mode, tag) = match parts.next()? {
            "hard" => (PurgeMode::Hard, false),
            "soft" => (PurgeMode::Soft, false),
            "hard-tag" => (PurgeMode::Hard, true),
            "soft-tag" => (PurgeMode::Soft, true),
            _ => return None,
        };
        let origin_instance = parts.next()?.to_owned();
        let name = parts.next()?.to_owned();
        Some(Invalidation {
            mode,
            origin_instance,
            target: if tag { Target::Tag(name) } else { Target::Key(name) },
        })
    }
}

/// Listens on the Redis channels until `shutdown`, reconnecting when the subscription drops:
/// purges from other replicas and fleet locks let go. Each (re)subscription clears this
/// replica's own tiers: purges published while it was not listening must not leave it serving
/// purged values.
pub fn spawn_listener<O: Origin>(
    cache: ReadThrough<O>,
    redis: RedisTier,
    fleet: Option<Fleet>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        shutdown
            .run_until_cancelled(listen(&cache, &redis, fleet.as_ref()))
            .await
    });
}

async fn listen<O: Origin>(cache: &ReadThrough<O>, redis: &RedisTier, fleet: Option<&Fleet>) {
    loop {
        let Ok((pubsub, node)) = redis.subscribe().await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        cache.clear_own_tiers();
        tracing::info!(%node, "listening for purges and fills from other replicas");
        let mut messages = pubsub.into_on_message();
        // A hung node keeps the socket open but delivers nothing: move when the pings say it
        // is down.
        let mut check = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else { break };
                    let Ok(text) = msg.get_payload::<String>() else {
                        continue;
                    };
                    match redis.channel_of(msg.get_channel_name()) {
                        Channel::Fill => {
                            if let Some(fleet) = fleet {
                                fleet.wake(&text);
                            }
                        }
                        Channel::Invalidate => {
                            if let Some(purge) = Invalidation::parse(&text) {
                                cache.apply_remote(&purge).await;
                            }
                        }
                    }
                }
                _ = check.tick() => {
                    if redis.node_down(&node) {
                        break;
                    }
                }
            }
        }
        tracing::warn!(%node, "subscription to other replicas lost; reconnecting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_keep_the_released_wire_format() {
        let purge = Invalidation {
            mode: PurgeMode::Soft,
            origin_instance: "42-abc".to_owned(),
            target: Target::Key("a\nkey with a newline".to_owned()),
        };
        assert_eq!(purge.encode(), "soft\n42-abc\na\nkey with a newline");
        assert_eq!(Invalidation::parse(&purge.encode()), Some(purge));
        assert_eq!(
            Invalidation::parse("hard\n1-2\nk").map(|p| p.mode),
            Some(PurgeMode::Hard)
        );
        assert_eq!(Invalidation::parse("tag\n1-2\nk"), None);
        let tag = Invalidation {
            mode: PurgeMode::Soft,
            origin_instance: "9-f".to_owned(),
            target: Target::Tag("a/b:*?".to_owned()),
        };
        assert_eq!(tag.encode(), "soft-tag\n9-f\na/b:*?");
        assert_eq!(Invalidation::parse(&tag.encode()), Some(tag));
        assert_eq!(Invalidation::parse("hard\n1-2"), None);
    }
}
