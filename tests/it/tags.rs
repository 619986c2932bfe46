//! Purge by tag (issue 18): the origin tags answers (`Surrogate-Key`), `DELETE /tags/{tag}`
//! removes exactly the entries carrying the tag from every tier on every replica, fetches in
//! flight stay out, and soft purges refresh within the origin's concurrency.

use std::collections::BTreeSet;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use rand::Rng;
use rand::SeedableRng;
use serde_json::Value;

use crate::harness::{
    Origin, RedisCluster, Service, client, entry_key, eventually, services_on, with_redis_and_origin,
};

const TOKEN: &str = "tag-purge-admin-token";

/// The service's settings for these tests: purging on, tags from the stub's `{tags}`.
fn env() -> Vec<(&'static str, &'static str)> {
    vec![("ADMIN_TOKEN", TOKEN)]
}

/// `DELETE /tags/{tag}` (`soft`: `?soft=true`): status and body.
async fn purge_tag(s: &Service, tag: &str, soft: bool) -> (u16, Value) {
    let url = format!(
        "{}/tags/{}{}",
        s.url(""),
        utf8_percent_encode(tag, NON_ALPHANUMERIC),
        if soft { "?soft=true" } else { "" }
    );
    let r = client().delete(url).bearer_auth(TOKEN).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// The item URL of `key`, percent-encoded (keys here hold `/`, `:`, `*`, `?`).
fn item(s: &Service, key: &str) -> String {
    format!(
        "{}/items/{}",
        s.url(""),
        utf8_percent_encode(key, NON_ALPHANUMERIC)
    )
}

async fn cache_status_of(s: &Service, key: &str) -> String {
    let r = client().get(item(s, key)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{key}");
    crate::harness::cache_status(&r)
}

async fn tagging_origin() -> Origin {
    let origin = Origin::start(&[]).await;
    origin.headers(&[("Surrogate-Key", "{tags}")]).await;
    origin
}

#[tokio::test]
async fn a_tag_purge_removes_exactly_the_tagged_entries_on_every_replica() {
    let (redis, origin, [a, b]) = with_redis_and_origin(&[], &env()).await;
    origin.headers(&[("Surrogate-Key", "{tags}")]).await;
    let keys = ["a~red~blue", "b~red", "c~reddish", "d~blue"];
    for key in keys {
        cache_status_of(&a, key).await;
        // B holds them in memory too, read from Redis.
        assert!(cache_status_of(&b, key).await.contains("detail=redis"));
    }
    let (status, body) = purge_tag(&a, "red", false).await;
    assert_eq!(status, 200);
    assert_eq!(body["tag"], "red");
    assert_eq!(body["purged"]["memory"], 2);
    assert_eq!(body["purged"]["redis"], 2);
    for key in ["a~red~blue", "b~red"] {
        assert_eq!(redis.cli(&["exists", &entry_key(key)]).trim(), "0", "{key}");
    }
    // B applies it from the message: its memory copies of the tagged keys go; the others stay.
    eventually("replica B to apply the tag purge", || async {
        let applied = b
            .metric("cache_invalidations_total{mode=\"hard\",scope=\"tag\",source=\"remote\"")
            .await;
        (applied == 1.0).then_some(())
    })
    .await;
    for key in ["c~reddish", "d~blue"] {
        assert!(
            cache_status_of(&b, key).await.contains("detail=memory"),
            "{key} untouched"
        );
    }
    for key in ["a~red~blue", "b~red"] {
        assert_eq!(
            cache_status_of(&b, key).await,
            "cache-layer; fwd=miss; stored",
            "{key}"
        );
    }
    assert_eq!(
        b.metric("cache_invalidated_entries_total{scope=\"tag\",tier=\"memory\"")
            .await,
        2.0
    );
    assert_eq!(
        a.metric("cache_invalidations_total{mode=\"hard\",scope=\"tag\",source=\"local\"")
            .await,
        1.0
    );
    assert_eq!(origin.served().await, 4 + 2);
}

#[tokio::test]
async fn tag_purges_are_exact_for_random_tag_sets() {
    // Tags that are prefixes of each other and hold `/`, `:`, `*`, `?`: only exact matches go.
    const TAGS: [&str; 8] = ["p", "p/1", "p/10", "p:*", "p?", "q", "*", "pq"];
    let (redis, origin, [s]) = with_redis_and_origin(&[], &env()).await;
    origin.headers(&[("Surrogate-Key", "{tags}")]).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(18);
    let mut entries: Vec<(String, BTreeSet<&str>)> = Vec::new();
    for i in 0..40 {
        let tags: BTreeSet<&str> = TAGS.iter().copied().filter(|_| rng.random_bool(0.3)).collect();
        let key = std::iter::once(format!("k{i}"))
            .chain(tags.iter().map(|t| t.to_string()))
            .collect::<Vec<_>>()
            .join("~");
        cache_status_of(&s, &key).await;
        entries.push((key, tags));
    }
    let mut purged: BTreeSet<&str> = BTreeSet::new();
    for tag in ["p", "p:*", "*"] {
        let expected = entries
            .iter()
            .filter(|(_, t)| t.contains(tag) && !t.iter().any(|x| purged.contains(x)))
            .count();
        let (status, body) = purge_tag(&s, tag, false).await;
        assert_eq!(status, 200);
        assert_eq!(body["purged"]["memory"], expected, "{tag}");
        assert_eq!(body["purged"]["redis"], expected, "{tag}");
        purged.insert(tag);
    }
    for (key, tags) in &entries {
        let gone = tags.iter().any(|t| purged.contains(t));
        let in_redis = redis.cli(&["exists", &entry_key(key)]).trim() == "1";
        assert_eq!(in_redis, !gone, "{key} in Redis");
        let status = cache_status_of(&s, key).await;
        assert_eq!(status.contains("hit"), !gone, "{key}: {status}");
    }
}

#[tokio::test]
async fn a_fetch_in_flight_whose_answer_carries_the_tag_does_not_store_it() {
    let origin = tagging_origin().await;
    origin.set("ok", 1500).await;
    let s = origin.service(&env()).await;
    let waiting = tokio::spawn({
        let url = item(&s, "k~t");
        async move { client().get(url).send().await.unwrap().status().as_u16() }
    });
    origin.wait_served(1).await;
    let (status, body) = purge_tag(&s, "t", false).await;
    assert_eq!((status, body["purged"]["memory"].as_u64()), (200, Some(0)));
    assert_eq!(
        waiting.await.unwrap(),
        200,
        "the request that asked before still gets its answer"
    );
    origin.set("ok", 0).await;
    assert_eq!(cache_status_of(&s, "k~t").await, "cache-layer; fwd=miss; stored");
    assert_eq!(origin.served().await, 2);
}

#[tokio::test]
async fn a_soft_tag_purge_serves_stale_and_refreshes_within_the_origins_concurrency() {
    let origin = tagging_origin().await;
    let s = origin
        .service(&[("ADMIN_TOKEN", TOKEN), ("ORIGIN_MAX_CONCURRENCY", "4")])
        .await;
    let keys: Vec<String> = (0..120).map(|i| format!("k{i}~hot")).collect();
    for key in &keys {
        cache_status_of(&s, key).await;
    }
    origin.set("ok", 100).await;
    let (status, body) = purge_tag(&s, "hot", true).await;
    assert_eq!((status, body["purged"]["memory"].as_u64()), (200, Some(120)));
    // Every key answers at once, stale, while at most half the permits refresh them.
    let answers = futures_util::future::join_all(keys.iter().map(|k| {
        let url = item(&s, k);
        async move {
            let r = client().get(url).send().await.unwrap();
            (r.status().as_u16(), crate::harness::cache_status(&r))
        }
    }))
    .await;
    for (status, cache) in &answers {
        assert_eq!(*status, 200);
        assert!(cache.contains("stale-while-revalidate"), "{cache}");
    }
    origin.wait_served(120 + 120).await;
    let stats = origin.stats().await;
    assert!(stats["max_in_flight"].as_u64().unwrap() <= 2, "{stats}");
    assert_eq!(s.metric("origin_requests_total{outcome=\"rejected\"").await, 0.0);
}

#[tokio::test]
async fn tags_beyond_the_limits_are_ignored_and_counted() {
    let origin = tagging_origin().await;
    let s = origin
        .service(&[
            ("ADMIN_TOKEN", TOKEN),
            ("TAGS_MAX_PER_ENTRY", "2"),
            ("TAG_MAX_BYTES", "8"),
        ])
        .await;
    cache_status_of(&s, "k~a~b~c~waytoolongtag").await;
    assert_eq!(s.metric("cache_tags_ignored_total").await, 2.0);
    assert_eq!(purge_tag(&s, "c", false).await.1["purged"]["memory"], 0);
    assert_eq!(purge_tag(&s, "b", false).await.1["purged"]["memory"], 1);
}

#[tokio::test]
async fn tag_purges_reach_entries_in_every_slot_of_a_cluster() {
    let cluster = RedisCluster::start().await;
    let origin = tagging_origin().await;
    let template = origin.template();
    let [s] = services_on(
        &cluster.urls(),
        &[
            ("REDIS_CLUSTER", "true"),
            ("ORIGIN_URL", &template),
            ("ADMIN_TOKEN", TOKEN),
            ("MEMORY_CACHE_ENABLED", "false"),
        ],
    )
    .await;
    let keys: Vec<String> = (0..30).map(|i| format!("k{i}~all")).collect();
    let owners: BTreeSet<usize> = keys.iter().map(|k| cluster.owner_of(&entry_key(k))).collect();
    assert!(owners.len() > 1, "the keys span several masters");
    for key in &keys {
        cache_status_of(&s, key).await;
    }
    let (status, body) = purge_tag(&s, "all", false).await;
    assert_eq!((status, body["purged"]["redis"].as_u64()), (200, Some(30)));
    for key in &keys {
        assert_eq!(cluster.cli(&["exists", &entry_key(key)]).trim(), "0", "{key}");
    }
}

#[tokio::test]
async fn tag_purges_need_the_admin_token_and_a_tag() {
    let origin = tagging_origin().await;
    let s = origin.service(&env()).await;
    let r = client().delete(s.url("/tags/x")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .delete(s.url("/tags/x"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client()
        .delete(s.url("/tags/"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "bad_tag");
    assert_eq!(
        s.metric("http_requests_total{route=\"/tags/{tag}\",status_class=\"4xx\"")
            .await,
        3.0
    );
}
