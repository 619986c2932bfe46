//! A fleet of read-throughs in one process, meeting on the in-process message bus
//! (`MemoryBus`) instead of Redis: fleet-wide coalescing and purges that reach the other
//! replicas, proved without a Redis server (the same protocol runs over Redis in redis.rs).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cache_layer::cache::{
    AnswerKind, AnyBus, AnyTier, CoalesceScope, FleetLock, Lifetimes, MemoryBus, MemoryTier, PurgeMode,
    ReadThrough, Replicas, Tier,
};
use cache_layer::origin::{Breaker, Fetched, GuardedOrigin, Origin, OriginError, Trip, Validators};
use cache_layer::telemetry::Metrics;
use tokio_util::sync::CancellationToken;

use crate::harness::eventually;

/// An origin that counts its fetches and takes `latency` over each.
#[derive(Clone)]
struct Counted {
    calls: Arc<AtomicUsize>,
    latency: Duration,
}

impl Origin for Counted {
    async fn fetch(
        &self,
        key: &str,
        _traceparent: Option<String>,
        _validators: Option<&Validators>,
    ) -> Result<Fetched, OriginError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(self.latency).await;
        Ok(Fetched::Value(
            Bytes::from(format!("\"{key} #{n}\"")),
            Default::default(),
        ))
    }
}

/// One replica: its own memory tier, then the tier every replica reads (as Redis would be),
/// over the one `origin`, meeting the others on `bus`.
struct Replica {
    cache: ReadThrough<Counted>,
    own: MemoryTier,
}

/// The origin behind a guard that never trips in these tests (the breaker needs 100 calls).
fn guarded(origin: &Counted, metrics: &Arc<Metrics>) -> GuardedOrigin<Counted> {
    let breaker = Arc::new(Breaker::new(
        Trip {
            window: Duration::from_secs(60),
            min_calls: 100,
            rate_percent: 100,
        },
        Duration::from_secs(1),
    ));
    GuardedOrigin::new(
        origin.clone(),
        64,
        Duration::from_secs(10),
        breaker,
        metrics.clone(),
    )
}

/// A Redis tier on a fresh `redis-server` (returned, to keep it running), keys under `prefix`.
async fn redis_tier(
    prefix: &str,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> (crate::harness::Redis, cache_layer::cache::RedisTier) {
    use cache_layer::cache::{Entry, RedisClient, RedisConfig, RedisTier};
    use redis::IntoConnectionInfo;
    let server = crate::harness::Redis::start().await;
    let config = RedisConfig {
        nodes: vec![server.url().into_connection_info().unwrap()],
        cluster: false,
        key_prefix: prefix.to_owned(),
        connect_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_secs(2),
    };
    let client = RedisClient::new(&config, metrics.clone()).unwrap();
    client.start(shutdown.clone()).await;
    (server, RedisTier::new(client, Entry::max_encoded_len(1 << 20)))
}

/// A fleet of replicas on `bus` sharing `shared`, with the fleet lock every test here uses.
fn replicas_on(bus: &MemoryBus, shared: AnyTier) -> Replicas {
    Replicas {
        bus: AnyBus::Memory(bus.clone()),
        shared,
        lock: FleetLock {
            ttl: Duration::from_secs(10),
            wait: Duration::from_secs(10),
            poll: Duration::from_millis(100),
        },
    }
}

fn replica(origin: &Counted, bus: &MemoryBus, shared: &MemoryTier, shutdown: &CancellationToken) -> Replica {
    let metrics = Arc::new(Metrics::detached());
    let own = MemoryTier::new(16 << 20, metrics.clone());
    let guarded = guarded(origin, &metrics);
    let replicas = replicas_on(bus, AnyTier::Memory(shared.clone()));
    let life = Lifetimes::fixed(
        Duration::from_secs(60),
        Duration::from_secs(60),
        Duration::from_secs(5),
    );
    let tiers = vec![AnyTier::Memory(own.clone()), AnyTier::Memory(shared.clone())];
    let cache = ReadThrough::new(tiers, guarded, life, Some(replicas), metrics);
    cache.spawn_listener(shutdown.clone());
    Replica { cache, own }
}

const WAIT: Duration = Duration::from_secs(10);

/// `n` replicas over one origin taking `latency` per fetch, on a new bus, sharing one tier.
fn fleet_of(n: usize, latency: Duration) -> (Counted, MemoryBus, Vec<Replica>, CancellationToken) {
    let origin = Counted {
        calls: Arc::default(),
        latency,
    };
    let (bus, shutdown) = (MemoryBus::new(), CancellationToken::new());
    let shared = MemoryTier::new(16 << 20, Arc::new(Metrics::detached()));
    let fleet = (0..n)
        .map(|_| replica(&origin, &bus, &shared, &shutdown))
        .collect();
    (origin, bus, fleet, shutdown)
}

#[tokio::test]
async fn replicas_on_one_bus_fetch_a_key_once_for_the_fleet_and_purge_it_everywhere() {
    let (origin, _bus, fleet, shutdown) = fleet_of(3, Duration::from_millis(300));
    // Each replica's listener subscribes in the background; wait until all three hear a purge.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The three miss at once: one fetch for the fleet, the other two wait on it.
    let answers = futures_util::future::join_all(fleet.iter().map(|r| r.cache.get("k", WAIT))).await;
    assert_eq!(
        origin.calls.load(Ordering::SeqCst),
        1,
        "one origin fetch for three replicas"
    );
    let by_fleet = answers
        .iter()
        .filter(|a| {
            matches!(
                a.as_ref().unwrap().kind,
                AnswerKind::Fetched {
                    collapsed: Some(CoalesceScope::Fleet),
                    ..
                }
            )
        })
        .count();
    assert_eq!(by_fleet, 2, "two replicas took the fleet's value");
    for a in &answers {
        assert_eq!(a.as_ref().unwrap().entry.value_json(), b"\"k #1\"");
    }
    // Every replica now holds it in its own tier.
    for r in &fleet {
        assert!(
            r.own.get_now("k").flatten().is_some(),
            "kept in each replica's own tier"
        );
    }

    // A hard purge on one replica reaches the others' own tiers through the bus.
    fleet[0]
        .cache
        .purge("k", PurgeMode::Hard)
        .await
        .expect("the purge reached the bus");
    for (i, r) in fleet.iter().enumerate() {
        eventually(&format!("replica {i} to drop the purged key"), || {
            let own = r.own.clone();
            async move { own.get_now("k").flatten().is_none().then_some(()) }
        })
        .await;
    }
    // The next read fetches again, once for the fleet.
    let again = futures_util::future::join_all(fleet.iter().map(|r| r.cache.get("k", WAIT))).await;
    assert_eq!(
        origin.calls.load(Ordering::SeqCst),
        2,
        "one fetch after the purge"
    );
    for a in &again {
        assert_eq!(a.as_ref().unwrap().entry.value_json(), b"\"k #2\"");
    }
    shutdown.cancel();
}

#[tokio::test]
async fn a_bus_that_is_down_leaves_each_replica_to_fetch_alone_and_a_purge_incomplete() {
    let (origin, bus, fleet, shutdown) = fleet_of(2, Duration::from_millis(100));
    bus.set_down(true);
    let answers = futures_util::future::join_all(fleet.iter().map(|r| r.cache.get("k", WAIT))).await;
    assert!(
        answers.iter().all(|a| a.is_ok()),
        "Redis (the bus) down never fails a request"
    );
    assert_eq!(
        origin.calls.load(Ordering::SeqCst),
        2,
        "no fleet lock: each replica fetches"
    );
    assert!(
        fleet[0].cache.purge("k", PurgeMode::Hard).await.is_err(),
        "a purge the other replicas cannot hear of says so"
    );
    assert!(
        fleet[0].own.get_now("k").flatten().is_none(),
        "and was applied here"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn an_entry_read_from_redis_that_a_known_purge_names_is_not_served_or_copied() {
    // A purge is published before Redis is purged: a replica that heard of it must not serve
    // (or copy into its memory) the entry Redis still holds for a moment.
    use cache_layer::cache::{Entry, Invalidation, Target, now_ms};

    let shutdown = CancellationToken::new();
    let metrics = Arc::new(Metrics::detached());
    let (_server, redis) = redis_tier("heard", &metrics, &shutdown).await;
    let origin = Counted {
        calls: Arc::default(),
        latency: Duration::from_millis(1),
    };
    let own = MemoryTier::new(16 << 20, metrics.clone());
    let guarded = guarded(&origin, &metrics);
    let life = Lifetimes::fixed(
        Duration::from_secs(60),
        Duration::from_secs(60),
        Duration::from_secs(5),
    );
    let cache = ReadThrough::new(
        vec![AnyTier::Memory(own.clone()), AnyTier::Redis(redis.clone())],
        guarded,
        life,
        None,
        metrics,
    );
    // Another replica stored both a second ago.
    let old = |key: &str, tags: &[String]| {
        Arc::new(Entry::value(key, b"\"old\"", now_ms() - 1_000, &life).with_tags(tags))
    };
    redis.put("k", old("k", &[])).await.unwrap();
    redis.put("t1", old("t1", &["t".to_owned()])).await.unwrap();
    for target in [Target::Key("k".to_owned()), Target::Tag("t".to_owned())] {
        cache
            .apply_remote(&Invalidation {
                mode: PurgeMode::Hard,
                origin_instance: "another-replica".to_owned(),
                target,
            })
            .await;
    }
    for (i, key) in ["k", "t1"].into_iter().enumerate() {
        let answer = cache.get(key, WAIT).await.unwrap();
        assert_ne!(
            answer.entry.value_json(),
            b"\"old\"",
            "{key}: the purged value is not served"
        );
        assert_eq!(origin.calls.load(Ordering::SeqCst), i + 1, "{key}: fetched again");
    }

    // This replica writes "w" to Redis after answering; another replica's purge of "w" whose
    // delete reached Redis before that write is heard a moment later: the write is undone there.
    cache.get("w", WAIT).await.unwrap();
    eventually("the write of w to reach Redis", || {
        let redis = redis.clone();
        async move { redis.get("w").await.ok().flatten().map(|_| ()) }
    })
    .await;
    cache
        .apply_remote(&Invalidation {
            mode: PurgeMode::Hard,
            origin_instance: "another-replica".to_owned(),
            target: Target::Key("w".to_owned()),
        })
        .await;
    assert!(
        redis.get("w").await.unwrap().is_none(),
        "a purge heard soon after the write undoes it in Redis"
    );
    shutdown.cancel();
}

/// Two replicas, each holding `keys` in its own tier.
async fn warm_pair(keys: usize) -> (Counted, MemoryBus, Vec<Replica>, CancellationToken) {
    let (origin, bus, pair, shutdown) = fleet_of(2, Duration::from_millis(1));
    tokio::time::sleep(Duration::from_millis(200)).await;
    for k in 0..keys {
        for r in &pair {
            r.cache.get(&format!("k{k}"), WAIT).await.unwrap();
        }
    }
    (origin, bus, pair, shutdown)
}

fn held(r: &Replica, keys: std::ops::Range<usize>) -> usize {
    keys.filter(|k| r.own.get_now(&format!("k{k}")).flatten().is_some())
        .count()
}

/// Hard purges of `k<i>` for every `i` in `keys`, through `r`.
async fn purge_keys(r: &Replica, keys: std::ops::Range<usize>) {
    for k in keys {
        let _ = r.cache.purge(&format!("k{k}"), PurgeMode::Hard).await;
    }
}

/// Waits until `r`'s own tier holds none of `k<i>` for `i` in `keys`.
async fn until_none_held(what: &str, r: &Replica, keys: std::ops::Range<usize>) {
    eventually(what, || {
        let keys = keys.clone();
        async move { (held(r, keys) == 0).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn a_replica_cut_off_catches_up_from_the_purge_records_and_keeps_the_rest() {
    let (_origin, bus, pair, shutdown) = warm_pair(100).await;
    assert_eq!(held(&pair[1], 0..100), 100);
    // B (and A) hear nothing for 2 s; A purges ten keys meanwhile: recorded, heard by nobody.
    bus.deafen_for(Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(800)).await;
    purge_keys(&pair[0], 0..10).await;
    assert_eq!(held(&pair[1], 0..10), 10, "B has not heard yet");
    // Subscribed again, B catches up: the ten go, the other ninety stay.
    until_none_held("B to catch up on the purges it missed", &pair[1], 0..10).await;
    assert_eq!(held(&pair[1], 10..100), 90, "nothing else was flushed");
    shutdown.cancel();
}

#[tokio::test]
async fn a_replica_whose_gap_the_records_cannot_cover_clears_its_own_tiers() {
    let (_origin, bus, pair, shutdown) = warm_pair(20).await;
    bus.deafen_for(Duration::from_secs(1));
    bus.lose_records();
    until_none_held("B to clear its own tier", &pair[1], 0..20).await;
    shutdown.cancel();
}

#[tokio::test]
async fn a_replica_whose_missed_purges_were_trimmed_from_the_records_clears_its_own_tiers() {
    let (_origin, bus, pair, shutdown) = warm_pair(20).await;
    // The records keep five; ten purges are made while B hears nothing: five of them are gone
    // from the records, so B cannot know which of its entries they named.
    bus.keep_records(5);
    bus.deafen_for(Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(800)).await;
    purge_keys(&pair[0], 0..10).await;
    assert_eq!(held(&pair[1], 0..20), 20, "B has not heard yet");
    until_none_held("B to clear its own tier", &pair[1], 0..20).await;
    shutdown.cancel();
}

#[tokio::test]
async fn records_trimmed_before_the_gap_began_still_cover_it() {
    let (_origin, bus, pair, shutdown) = warm_pair(20).await;
    bus.keep_records(5);
    // Ten purges B hears (the first five are trimmed from the records), then a gap with two
    // (which trim two more that B had heard).
    purge_keys(&pair[0], 0..10).await;
    until_none_held("B to hear the ten", &pair[1], 0..10).await;
    // Past the listener's slack for clocks (5 s): the catch-up reads from after the trim.
    tokio::time::sleep(Duration::from_millis(6_000)).await;
    bus.deafen_for(Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(800)).await;
    purge_keys(&pair[0], 10..12).await;
    until_none_held("B to catch up on the two", &pair[1], 10..12).await;
    assert_eq!(
        held(&pair[1], 12..20),
        8,
        "the records covered the gap: nothing else was flushed"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_replica_started_while_a_purge_sweeps_redis_refuses_what_redis_still_holds() {
    // A big tag's purge is published and recorded before Redis is swept, which takes seconds:
    // a replica that starts meanwhile heard no message, so it reads the recent records at its
    // first subscription, or it would copy the not-yet-swept entries into memory for good.
    use cache_layer::cache::{Entry, PurgeRecords, now_ms};
    let shutdown = CancellationToken::new();
    let metrics = Arc::new(Metrics::detached());
    let (_server, redis) = redis_tier("late", &metrics, &shutdown).await;
    let life = Lifetimes::fixed(
        Duration::from_secs(60),
        Duration::from_secs(60),
        Duration::from_secs(5),
    );
    // Stored by another replica a second ago; purged half a second ago, not yet swept.
    let old = Arc::new(Entry::value("k1", b"\"old\"", now_ms() - 1_000, &life));
    redis.put("k1", old).await.unwrap();
    let bus = MemoryBus::new();
    bus.record("hard\nkey\nk1", now_ms() - 500, 60_000).await.unwrap();

    let origin = Counted {
        calls: Arc::default(),
        latency: Duration::from_millis(1),
    };
    let guarded = guarded(&origin, &metrics);
    let replicas = replicas_on(&bus, AnyTier::Redis(redis.clone()));
    let own = MemoryTier::new(16 << 20, metrics.clone());
    let late = ReadThrough::new(
        vec![AnyTier::Memory(own), AnyTier::Redis(redis)],
        guarded,
        life,
        Some(replicas),
        metrics,
    );
    late.spawn_listener(shutdown.clone());
    eventually("the new replica to listen", || {
        let n = bus.subscribers();
        async move { (n > 0).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = late.get("k1", WAIT).await.unwrap();
    assert!(
        matches!(answer.kind, AnswerKind::Fetched { .. }),
        "Redis's copy predates a recorded purge: {:?}",
        answer.kind
    );
    assert_eq!(origin.calls.load(Ordering::SeqCst), 1);
    shutdown.cancel();
}
