//! Redis Cluster faults (issue 13), on a real 6-node cluster (3 masters, 3 replicas,
//! `cluster-node-timeout 1000`): a failed master costs only its slots, the tier follows the
//! cluster's promotion without a restart, and a burst right after a kill does not wedge it.

use serde_json::Value;

use crate::harness::{
    Origin, RedisCluster, Service, cache_status, client, entry_key, eventually, owner_in, services_on,
};

/// A key (among `prefix-0`, `prefix-1`, …) whose entry lives on node `owner`, or on any other
/// master when `on_owner` is false.
fn key_on(cluster: &RedisCluster, owner: usize, on_owner: bool, prefix: &str) -> String {
    let masters = cluster.masters();
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|k| (owner_in(&masters, &entry_key(k)) == owner) == on_owner)
        .unwrap()
}

/// A Redis-only replica (every request touches Redis) on the cluster.
async fn redis_only(cluster: &RedisCluster, origin: &Origin) -> Service {
    let template = origin.template();
    let [s] = services_on(
        &cluster.urls(),
        &[
            ("ORIGIN_URL", &template),
            ("REDIS_CLUSTER", "true"),
            ("MEMORY_CACHE_ENABLED", "false"),
        ],
    )
    .await;
    s
}

async fn health(s: &Service) -> Value {
    s.json("/health").await
}

#[tokio::test]
async fn a_hung_master_costs_only_its_own_slots() {
    let cluster = RedisCluster::start_with_replicas().await;
    let origin = Origin::start(&[]).await;
    let s = redis_only(&cluster, &origin).await;
    let hung = cluster.masters()[0].0;
    let (healthy_key, hung_key) = (
        key_on(&cluster, hung, false, "h"),
        key_on(&cluster, hung, true, "x"),
    );
    assert_eq!(s.get(&healthy_key).await.0, 200);
    assert_eq!(s.get(&hung_key).await.0, 200);
    cluster.nodes[hung].pause();
    // The hung node is found (its pings fail) and only its keys go without Redis.
    eventually("health to say partial", || async {
        (health(&s).await["tiers"]["redis"] == "partial").then_some(())
    })
    .await;
    let h = health(&s).await;
    assert_eq!(h["redis_nodes"]["down"], 1, "{h}");
    assert_eq!(h["status"], "degraded");
    // Served from Redis throughout, except while the whole cluster refuses queries between the
    // node timeout and the promotion (`cluster-require-full-coverage`, Redis's default).
    eventually("a key on a healthy master to be a Redis hit", || async {
        let (code, status, _) = s.get(&healthy_key).await;
        assert_eq!(code, 200);
        status.ends_with("detail=redis").then_some(())
    })
    .await;
    // Purges of keys on healthy masters reach Redis: 204, not 503 purge_incomplete.
    let purged = key_on(&cluster, hung, false, "p");
    assert_eq!(s.get(&purged).await.0, 200);
    let s2 = origin
        .service(&[
            ("REDIS_URL", &cluster.urls()),
            ("REDIS_CLUSTER", "true"),
            ("ADMIN_TOKEN", "0123456789abcdef"),
        ])
        .await;
    eventually("the purging replica to see the healthy masters", || async {
        let r = client()
            .delete(s2.item_url(&purged))
            .header("authorization", "Bearer 0123456789abcdef")
            .send()
            .await
            .unwrap();
        (r.status() == 204).then_some(())
    })
    .await;
    // The purge reaches s by its subscription (a message a moment later): s then misses.
    eventually("the purge to reach the other replica", || async {
        (s.get(&purged).await.1 == "cache-layer; fwd=miss; stored").then_some(())
    })
    .await;
    // The cluster promotes the hung master's replica; its slots are served from Redis again.
    eventually(
        "the hung master's slots to come back through its promoted replica",
        || async {
            let (code, status, _) = s.get(&hung_key).await;
            (code == 200 && status.ends_with("detail=redis")).then_some(())
        },
    )
    .await;
    eventually("health to be ok after the promotion", || async {
        (health(&s).await["tiers"]["redis"] == "ok").then_some(())
    })
    .await;
    cluster.nodes[hung].resume();
}

#[tokio::test]
async fn a_killed_master_and_a_burst_on_its_slots_do_not_wedge_the_tier() {
    let mut cluster = RedisCluster::start_with_replicas().await;
    let origin = Origin::start(&[("STUB_LATENCY_MS", "1000")]).await;
    let s = redis_only(&cluster, &origin).await;
    let killed = cluster.masters()[1].0;
    let warm = key_on(&cluster, killed, true, "w");
    assert_eq!(s.get(&warm).await.0, 200);
    let cold = key_on(&cluster, killed, true, "cold");
    let served_before = origin.served().await;
    cluster.nodes[killed].stop();
    // At once: 200 concurrent requests for one cold key whose slot was on the killed master.
    let c = client();
    let burst = (0..200).map(|_| {
        let (c, url) = (c.clone(), s.item_url(&cold));
        async move { c.get(url).send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    });
    let codes = futures_util::future::join_all(burst).await;
    assert!(codes.iter().all(|&c| c == 200), "{codes:?}");
    // One fetch for this replica: the fleet lock's node is gone, so that is the floor.
    assert_eq!(origin.served().await - served_before, 1);
    // After the promotion the killed master's slots are served from Redis again, by the
    // same process: the tier did not wedge.
    eventually(
        "the killed master's slots to be served from Redis again",
        || async {
            let r = c.get(s.item_url(&warm)).send().await.ok()?;
            cache_status(&r).ends_with("detail=redis").then_some(())
        },
    )
    .await;
    eventually("health to be ok after the promotion", || async {
        (health(&s).await["tiers"]["redis"] == "ok").then_some(())
    })
    .await;
    // New values for those slots are stored and found again.
    let fresh = key_on(&cluster, cluster.owner_of(&entry_key(&warm)), true, "after");
    assert_eq!(s.get(&fresh).await.1, "cache-layer; fwd=miss; stored");
    assert!(s.get(&fresh).await.1.ends_with("detail=redis"));
}

#[tokio::test]
async fn purges_still_reach_every_replica_after_the_master_of_their_sharded_channel_fails() {
    let mut cluster = RedisCluster::start_with_replicas().await;
    let origin = Origin::start(&[]).await;
    let template = origin.template();
    let env = [
        ("REDIS_CLUSTER", "true"),
        ("ORIGIN_URL", template.as_str()),
        ("ADMIN_TOKEN", "0123456789abcdef"),
    ];
    let [a, b] = services_on(&cluster.urls(), &env).await;
    let channel = "{cache-layer:bus}:invalidate";
    let shard = cluster.owner_of(channel);
    // A key whose entry is on another master, held in both replicas' memory.
    let key = key_on(&cluster, shard, false, "k");
    assert_eq!(a.get(&key).await.0, 200);
    eventually("b to hold the key in memory", || async {
        b.get(&key).await.1.ends_with("detail=memory").then_some(())
    })
    .await;
    cluster.nodes[shard].stop();
    // A replica of the shard is promoted; both replicas subscribe on it again.
    eventually(
        "the channel's shard to have a new master with both replicas on it",
        || async {
            let slot = cache_layer::cache::key_slot(channel.as_bytes());
            let owner = cluster
                .masters()
                .into_iter()
                .find(|(_, ranges)| ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&slot)))
                .map(|(i, _)| i)
                .filter(|&i| i != shard)?;
            let n = cluster.nodes[owner].cli(&["PUBSUB", "SHARDNUMSUB", channel]);
            (n.lines().nth(1) == Some("2")).then_some(())
        },
    )
    .await;
    let purge = || async {
        client()
            .delete(a.item_url(&key))
            .bearer_auth("0123456789abcdef")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    eventually("the purge to answer 204 once a sees the promotion", || async {
        (purge().await == 204).then_some(())
    })
    .await;
    eventually("b to drop the key", || async {
        let status = b.get(&key).await.1;
        (!status.ends_with("detail=memory")).then_some(())
    })
    .await;
}
