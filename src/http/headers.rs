//! `Age` and `Cache-Status` header values made once at start-up, so the hit path clones a
//! ready value instead of formatting one.

use axum::http::HeaderValue;

use crate::cache::{AnswerKind, Forward, StaleReason, TierName};

/// Values are precomputed for ages and TTLs up to this many seconds; larger ones are formatted.
const TABLE_SECS: u64 = 3600;

/// Precomputed header values.
pub struct HeaderTables {
    /// `Age: n` for n in 0..=TABLE_SECS.
    age: Vec<HeaderValue>,
    /// `cache-layer; hit; ttl=n; detail=memory`.
    memory_hit: Vec<HeaderValue>,
    /// `cache-layer; hit; ttl=n; detail=disk`.
    disk_hit: Vec<HeaderValue>,
    /// `cache-layer; hit; ttl=n; detail=redis`.
    redis_hit: Vec<HeaderValue>,
}

impl Default for HeaderTables {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderTables {
    /// Tables for ages and TTLs up to an hour (the origin may set any TTL).
    pub fn new() -> Self {
        let hits = |tier: TierName| (0..=TABLE_SECS).map(|n| hit_value(tier, n)).collect();
        HeaderTables {
            age: (0..=TABLE_SECS).map(HeaderValue::from).collect(),
            memory_hit: hits(TierName::Memory),
            disk_hit: hits(TierName::Disk),
            redis_hit: hits(TierName::Redis),
        }
    }

    /// The `Age` value.
    pub fn age(&self, secs: u64) -> HeaderValue {
        self.age
            .get(secs as usize)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from(secs))
    }

    /// The `Cache-Status` value for an answer.
    pub fn cache_status(&self, kind: AnswerKind) -> HeaderValue {
        match kind {
            AnswerKind::Hit { tier, ttl_secs } => {
                let table = match tier {
                    TierName::Memory => &self.memory_hit,
                    TierName::Disk => &self.disk_hit,
                    TierName::Redis => &self.redis_hit,
                };
                table
                    .get(ttl_secs as usize)
                    .cloned()
                    .unwrap_or_else(|| hit_value(tier, ttl_secs))
            }
            AnswerKind::Stale { reason, over_secs } => stale_value(reason, over_secs),
            AnswerKind::NegativeHit => HeaderValue::from_static("cache-layer; hit; detail=negative"),
            AnswerKind::Revalidated { .. } => {
                HeaderValue::from_static("cache-layer; hit; fwd=stale; fwd-status=304")
            }
            AnswerKind::Fetched {
                collapsed,
                forward,
                not_stored: None,
            } => match (collapsed.is_some(), forward) {
                (false, Forward::Miss) => HeaderValue::from_static("cache-layer; fwd=miss; stored"),
                (false, Forward::Stale) => HeaderValue::from_static("cache-layer; fwd=stale; stored"),
                (true, Forward::Miss) => HeaderValue::from_static("cache-layer; fwd=miss; collapsed"),
                (true, Forward::Stale) => HeaderValue::from_static("cache-layer; fwd=stale; collapsed"),
            },
            AnswerKind::Fetched {
                collapsed,
                forward,
                not_stored: Some(reason),
            } => {
                // Not stored: said so, and why (RFC 9211 `detail`).
                let fwd = match forward {
                    Forward::Miss => "miss",
                    Forward::Stale => "stale",
                };
                let collapsed = if collapsed.is_some() { "; collapsed" } else { "" };
                HeaderValue::try_from(format!(
                    "cache-layer; fwd={fwd}{collapsed}; detail={}",
                    reason.as_str()
                ))
                .expect("ASCII header value")
            }
        }
    }
}

fn hit_value(tier: TierName, ttl: u64) -> HeaderValue {
    HeaderValue::try_from(format!("cache-layer; hit; ttl={ttl}; detail={}", tier.as_str()))
        .expect("ASCII header value")
}

fn stale_value(reason: StaleReason, over: u64) -> HeaderValue {
    let ttl = if over == 0 {
        "0".to_owned()
    } else {
        format!("-{over}")
    };
    HeaderValue::try_from(format!("cache-layer; hit; ttl={ttl}; detail={}", reason.as_str()))
        .expect("ASCII header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_match_the_contract_inside_and_outside_the_tables() {
        let t = HeaderTables::new();
        let hit = |tier, ttl_secs| t.cache_status(AnswerKind::Hit { tier, ttl_secs });
        assert_eq!(
            hit(TierName::Memory, 59),
            "cache-layer; hit; ttl=59; detail=memory"
        );
        assert_eq!(
            hit(TierName::Redis, 4000),
            "cache-layer; hit; ttl=4000; detail=redis"
        );
        let stale = t.cache_status(AnswerKind::Stale {
            reason: StaleReason::IfError,
            over_secs: 3,
        });
        assert_eq!(stale, "cache-layer; hit; ttl=-3; detail=stale-if-error");
        assert_eq!(t.age(7), "7");
        assert_eq!(t.age(99_999), "99999");
    }
}
