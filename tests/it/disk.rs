//! The disk tier (issue 19): between memory and Redis, recovered after a restart, reached by
//! purges (also those a replica missed while it was away), and a failing disk degrades the
//! service to no disk tier rather than failing requests.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Origin, Redis, Service, cache_status, client, eventually, services_on};

const TOKEN: &str = "disk-tier-admin-token";

/// The service's settings for a disk tier in `dir`: 8 MiB of disk, every fill written to it
/// (the default, written from the second request on, has its own test), purging on. `memory`:
/// keep the memory tier, or go without it so every hit is the disk's.
fn env(dir: &Path, memory: bool) -> Vec<(&'static str, String)> {
    vec![
        ("DISK_CACHE_DIR", dir.display().to_string()),
        ("DISK_CACHE_MAX_BYTES", (8 << 20).to_string()),
        ("DISK_CACHE_ADMIT_MIN_REQUESTS", "1".to_owned()),
        ("MEMORY_CACHE_ENABLED", memory.to_string()),
        ("ADMIN_TOKEN", TOKEN.to_owned()),
    ]
}

fn refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn start(origin: &Origin, env: &[(&'static str, String)]) -> Service {
    origin.service(&refs(env)).await
}

/// Stops `s` with SIGTERM (so the tier is closed as in a rolling update) and waits for it.
async fn stop(mut s: Service) {
    s.terminate();
    assert!(s.wait_exit().await.success());
}

async fn purge(s: &Service, path: &str) -> u16 {
    purge_answer(s, path).await.0
}

/// `DELETE path` with the admin token: the status and the JSON body (`Null` when there is none).
async fn purge_answer(s: &Service, path: &str) -> (u16, Value) {
    let r = client()
        .delete(s.url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Polls `/health` until the disk tier is `want`.
async fn wait_disk(s: &Service, want: &str) -> Value {
    eventually(&format!("tiers.disk to be {want}"), || async {
        let h = s.json("/health").await;
        (h["tiers"]["disk"] == want).then_some(h)
    })
    .await
}

/// After a soft purge of `key`: answered stale at once, refreshed in the background (the
/// origin's `served`-th fetch), and then a fresh disk hit.
async fn served_stale_then_refreshed_on_disk(s: &Service, origin: &Origin, key: &str, served: u64) {
    let stale = s.get(key).await.1;
    assert!(stale.ends_with("detail=stale-while-revalidate"), "{stale}");
    origin.wait_served(served).await;
    eventually(&format!("{key} refreshed on disk"), || async {
        s.get(key).await.1.ends_with("detail=disk").then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_disk_tier_serves_hits_and_keeps_them_across_a_restart() {
    let origin = Origin::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path(), true);
    let s = start(&origin, &env).await;
    assert_eq!(s.json("/health").await["tiers"]["disk"], "ok");
    for key in ["a", "b", "c"] {
        let (code, status, body) = s.get(key).await;
        assert_eq!((code, status.as_str()), (200, "cache-layer; fwd=miss; stored"));
        assert_eq!(body["source"], "origin");
    }
    // The memory tier answers while it holds them.
    assert!(s.get("a").await.1.ends_with("detail=memory"));
    stop(s).await;

    // A new process: memory is empty, the disk recovered every entry.
    let s = start(&origin, &env).await;
    for key in ["a", "b", "c"] {
        let (code, status, body) = s.get(key).await;
        assert_eq!(code, 200);
        assert!(
            status.starts_with("cache-layer; hit; ttl=") && status.ends_with("; detail=disk"),
            "{status}"
        );
        assert_eq!(
            (body["key"].as_str(), body["source"].as_str()),
            (Some(key), Some("cache"))
        );
    }
    // A disk hit is kept in memory in front of it.
    assert!(s.get("a").await.1.ends_with("detail=memory"));
    assert_eq!(
        origin.served().await,
        3,
        "nothing fetched again after the restart"
    );
    assert_eq!(s.metric("cache_hits_total{tier=\"disk\"").await, 3.0);
    assert_eq!(s.metric("disk_cache_up").await, 1.0);
    assert_eq!(s.metric("disk_cache_capacity_bytes").await, (8 << 20) as f64);
}

#[tokio::test]
async fn keys_read_once_stay_off_the_disk_and_keys_read_again_reach_it() {
    let origin = Origin::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    // The default admission (DISK_CACHE_ADMIT_MIN_REQUESTS unset: 2), no memory tier.
    let mut env = env(dir.path(), false);
    env.retain(|(k, _)| *k != "DISK_CACHE_ADMIT_MIN_REQUESTS");
    let s = start(&origin, &env).await;
    // A small entry asked once goes into the free room of its bucket: it pushes nothing out.
    assert_eq!(s.get("small-once").await.1, "cache-layer; fwd=miss; stored");
    assert!(s.get("small-once").await.1.ends_with("detail=disk"));
    // Larger entries (3 KB) go to the engine's log, where every write pushes out the oldest:
    // admission guards every one of them.
    origin.set("bytes:3000", 0).await;
    // Asked once: fetched and answered, but not written to disk; with no other tier, nothing
    // kept it, and Cache-Status says so (no `stored`).
    assert_eq!(s.get("once").await.1, "cache-layer; fwd=miss; detail=declined");
    assert_eq!(s.metric("disk_cache_rejected_total").await, 1.0);
    // Asked twice: the first fill is kept off, the second written, the third request a hit.
    assert_eq!(s.get("twice").await.1, "cache-layer; fwd=miss; detail=declined");
    assert_eq!(s.get("twice").await.1, "cache-layer; fwd=miss; stored");
    assert!(s.get("twice").await.1.ends_with("detail=disk"));
    assert_eq!(origin.served().await, 4);
    assert_eq!(s.metric("disk_cache_rejected_total").await, 2.0);
    assert_eq!(s.metric("cache_not_stored_total{reason=\"declined\"").await, 2.0);
    // After a restart what the disk holds is served, and a newer fill of a key it holds is
    // written whatever the counts say (the disk never keeps an older version than the one
    // fetched): a soft purge, then the stale answer's refresh. The counts were saved at
    // shutdown: `once`, asked once before the restart, is admitted on its second request.
    stop(s).await;
    let s = start(&origin, &env).await;
    assert_eq!(purge(&s, "/items/twice?soft=true").await, 204);
    served_stale_then_refreshed_on_disk(&s, &origin, "twice", 5).await;
    assert_eq!(s.metric("disk_cache_rejected_total").await, 0.0);
    assert_eq!(s.get("once").await.1, "cache-layer; fwd=miss; stored");
    assert_eq!(origin.served().await, 6);
    assert_eq!(s.get("fresh").await.1, "cache-layer; fwd=miss; detail=declined");
    assert_eq!(s.metric("disk_cache_rejected_total").await, 1.0);
}

#[tokio::test]
async fn small_entries_share_pages_and_large_ones_have_their_own() {
    let origin = Origin::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    // The smallest disk: 4 MiB, 1,024 pages of 4 KiB. Every fill written, no memory tier.
    let mut env = env(dir.path(), false);
    env.retain(|(k, _)| *k != "DISK_CACHE_MAX_BYTES");
    env.push(("DISK_CACHE_MAX_BYTES", (4 << 20).to_string()));
    let s = start(&origin, &env).await;
    const KEYS: usize = 1800;
    // One client for the many requests (a client each would make this slow).
    let c = client();
    let get = |i: usize| {
        let req = c.get(s.item_url(&format!("s{i}")));
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            cache_status(&r)
        }
    };
    for i in 0..KEYS {
        get(i).await;
    }
    let mut hits = 0;
    for i in 0..KEYS {
        hits += usize::from(get(i).await.ends_with("detail=disk"));
    }
    // One entry per page would serve at most 1,024 of them (fewer: blocks being written and
    // the free ones the engine keeps take pages too).
    assert!(
        hits > 1024,
        "{hits} of {KEYS} small entries served from 1,024 pages"
    );

    // A large entry (3 KB, over a quarter of a page) is kept on its own and served.
    origin.set("bytes:3000", 0).await;
    assert_eq!(s.get("big").await.1, "cache-layer; fwd=miss; stored");
    let (_, status, body) = s.get("big").await;
    assert!(status.ends_with("detail=disk"), "{status}");
    assert_eq!(body["value"]["padding"].as_str().map(str::len), Some(3000));
    // Refetched small, it moves to its bucket and the large version is gone from disk.
    origin.set("ok", 0).await;
    assert_eq!(purge(&s, "/items/big?soft=true").await, 204);
    let before = origin.served().await;
    served_stale_then_refreshed_on_disk(&s, &origin, "big", before + 1).await;
    let (_, _, body) = s.get("big").await;
    assert!(body["value"].get("padding").is_none(), "{body}");
    // A hard purge removes it, wherever it is.
    assert_eq!(purge(&s, "/items/big").await, 204);
    assert_eq!(s.get("big").await.1, "cache-layer; fwd=miss; stored");
}

#[tokio::test]
async fn a_resized_disk_keeps_its_small_entries_and_never_serves_a_wrong_one() {
    let origin = Origin::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let sized = |bytes: u64| {
        let mut env = env(dir.path(), false);
        env.retain(|(k, _)| *k != "DISK_CACHE_MAX_BYTES");
        env.push(("DISK_CACHE_MAX_BYTES", bytes.to_string()));
        env
    };
    const KEYS: usize = 600;
    let c = client();
    // Each key's value as the origin first served it (its `n` says which fetch it was).
    let get = |s: &Service, i: usize| {
        let req = c.get(s.item_url(&format!("r{i}")));
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            let status = cache_status(&r);
            let body: Value = r.json().await.unwrap();
            (status, body["value"].clone())
        }
    };
    let s = start(&origin, &sized(8 << 20)).await;
    let mut first = Vec::new();
    for i in 0..KEYS {
        first.push(get(&s, i).await.1);
    }
    let mut on_disk = 0;
    for i in 0..KEYS {
        on_disk += usize::from(get(&s, i).await.0.ends_with("detail=disk"));
    }
    stop(s).await;

    // Twice the bytes: the small entries are still there.
    let s = start(&origin, &sized(16 << 20)).await;
    wait_disk(&s, "ok").await;
    let mut kept = 0;
    // Each key's newest value: a key not served from disk here is fetched anew (and stored).
    let mut latest = first.clone();
    for (i, newest) in latest.iter_mut().enumerate() {
        let (status, got) = get(&s, i).await;
        if status.ends_with("detail=disk") {
            assert_eq!(&got, newest, "r{i}: the value it held");
            kept += 1;
        } else {
            *newest = got;
        }
    }
    assert!(
        kept * 10 >= on_disk * 8,
        "{kept} of the {on_disk} small entries on disk still served after doubling the disk"
    );
    stop(s).await;

    // Resized again and again (each before the last one's transition ended), the misses fetched
    // anew: what is served from disk is always each key's newest value, never another key's
    // nor an older version (an 8 MiB bucket still holding the first version after 16 and 32).
    for mib in [32_u64, 8, 4] {
        let s = start(&origin, &sized(mib << 20)).await;
        wait_disk(&s, "ok").await;
        for (i, newest) in latest.iter_mut().enumerate() {
            let (status, got) = get(&s, i).await;
            assert_eq!(
                got["path"].as_str().map(|p| p.ends_with(&format!("/r{i}"))),
                Some(true),
                "{got}"
            );
            if status.ends_with("detail=disk") {
                assert_eq!(&got, newest, "r{i} at {mib} MiB: its newest value");
            } else {
                *newest = got;
            }
        }
        stop(s).await;
    }

    // Made smaller, the disk still takes new entries (the blocks it kept all held data, and
    // the engine writes only into clean ones).
    let s = start(&origin, &sized(4 << 20)).await;
    wait_disk(&s, "ok").await;
    // Once the entries of the old buckets are moved, the layout names no previous count and
    // the small entries' file is cut to today's pages.
    let layout = dir.path().join("cache-layer-layout");
    let by = std::time::Instant::now() + Duration::from_secs(60);
    let buckets = loop {
        let text = std::fs::read_to_string(&layout).unwrap_or_default();
        if text.contains(" previous= ") {
            let field = text.split_whitespace().find_map(|f| f.strip_prefix("buckets="));
            break field.unwrap().parse::<u64>().unwrap();
        }
        assert!(std::time::Instant::now() < by, "the move never ended: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pages = std::fs::metadata(dir.path().join("cache-layer-buckets"))
        .unwrap()
        .len();
    assert_eq!(pages, buckets * 4096);
    let c2 = client();
    let status_of = |i: usize| {
        let req = c2.get(s.item_url(&format!("after-shrink{i}")));
        async move { cache_status(&req.send().await.unwrap()) }
    };
    for i in 0..200 {
        status_of(i).await;
    }
    let mut stored = 0;
    for i in 0..200 {
        stored += usize::from(status_of(i).await.ends_with("detail=disk"));
    }
    assert!(
        stored >= 150,
        "{stored} of 200 new entries served from a disk made smaller"
    );
    let refetched = format!("r{}", KEYS - 1);
    assert_eq!(purge(&s, &format!("/items/{refetched}")).await, 204);
    let (_, fresh) = get(&s, KEYS - 1).await;
    assert_ne!(fresh, latest[KEYS - 1], "purged: fetched again");
    stop(s).await;
    let s = start(&origin, &sized(8 << 20)).await;
    wait_disk(&s, "ok").await;
    let (_, got) = get(&s, KEYS - 1).await;
    assert_ne!(
        got,
        latest[KEYS - 1],
        "{refetched}: the purged version never comes back"
    );
}

#[tokio::test]
async fn key_soft_and_tag_purges_reach_the_disk_and_outlive_a_restart() {
    let origin = Origin::start(&[]).await;
    origin.headers(&[("Surrogate-Key", "{tags}")]).await;
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path(), false);
    let s = start(&origin, &env).await;
    let keys = ["k1~red", "k2~blue", "k3~red~blue", "k4"];
    for key in keys {
        assert_eq!(s.get(key).await.1, "cache-layer; fwd=miss; stored");
        assert!(s.get(key).await.1.ends_with("detail=disk"));
    }
    assert_eq!(origin.served().await, 4);

    // Hard key purge, tag purge, soft key purge.
    assert_eq!(purge(&s, "/items/k4").await, 204);
    assert_eq!(purge(&s, "/tags/red").await, 200);
    assert_eq!(purge(&s, "/items/k2~blue?soft=true").await, 204);
    assert_eq!(s.get("k4").await.1, "cache-layer; fwd=miss; stored");
    assert_eq!(s.get("k1~red").await.1, "cache-layer; fwd=miss; stored");
    assert_eq!(s.get("k3~red~blue").await.1, "cache-layer; fwd=miss; stored");
    // Soft: served stale at once, refreshed in the background.
    served_stale_then_refreshed_on_disk(&s, &origin, "k2~blue", 8).await;
    assert_eq!(
        s.metric("disk_cache_dropped_total{reason=\"purged\"").await,
        2.0,
        "the tag purge's two entries, dropped when read"
    );
    assert_eq!(
        s.metric("cache_invalidated_entries_total{scope=\"tag\",tier=\"disk\"")
            .await,
        2.0
    );

    // Purge again after the refetches, then restart: what the disk still holds from before the
    // purges must not come back (no Redis here: the purge file remembers).
    assert_eq!(purge(&s, "/tags/blue").await, 200);
    stop(s).await;
    let s = start(&origin, &env).await;
    let before = origin.served().await;
    assert_eq!(s.get("k2~blue").await.1, "cache-layer; fwd=miss; stored");
    assert_eq!(s.get("k3~red~blue").await.1, "cache-layer; fwd=miss; stored");
    // Untouched by the blue purge: still a disk hit.
    assert!(s.get("k1~red").await.1.ends_with("detail=disk"));
    assert_eq!(origin.served().await, before + 2);
}

#[tokio::test]
async fn a_replica_back_from_away_drops_what_was_purged_while_it_was_down() {
    let redis = Redis::start().await;
    let origin = Origin::start(&[]).await;
    origin.headers(&[("Surrogate-Key", "{tags}")]).await;
    let dir = tempfile::tempdir().unwrap();
    let template = origin.template();
    let disk_env = env(dir.path(), true);
    let mut with_disk = refs(&disk_env);
    with_disk.push(("ORIGIN_URL", &template));
    let [b] = services_on(&redis.url(), &with_disk).await;
    for key in ["gone", "tagged~t", "kept"] {
        assert_eq!(b.get(key).await.1, "cache-layer; fwd=miss; stored");
    }
    stop(b).await;

    // Another replica (no disk) takes two purges while b is down: b hears neither message.
    let plain = [("ORIGIN_URL", template.as_str()), ("ADMIN_TOKEN", TOKEN)];
    let [a] = services_on(&redis.url(), &plain).await;
    assert_eq!(purge(&a, "/items/gone").await, 204);
    assert_eq!(purge(&a, "/tags/t").await, 200);
    assert!(a.get("kept").await.1.ends_with("detail=redis"));

    // b again, on the same disk: the purged entries are not served from it.
    let [b] = services_on(&redis.url(), &with_disk).await;
    let served = origin.served().await;
    assert_eq!(b.get("gone").await.1, "cache-layer; fwd=miss; stored");
    assert_eq!(b.get("tagged~t").await.1, "cache-layer; fwd=miss; stored");
    assert!(b.get("kept").await.1.ends_with("detail=disk"));
    assert_eq!(origin.served().await, served + 2);
    assert_eq!(b.metric("disk_cache_dropped_total{reason=\"purged\"").await, 2.0);
    let recorded = redis.cli(&["ZCARD", "cache-layer:v1:purges"]);
    assert_eq!(recorded.trim(), "2", "both purges recorded in Redis");
}

/// What Redis goes through while b is down, in [`back_after`].
enum Meanwhile {
    /// Nothing.
    Nothing,
    /// This script (`EVAL script 1 <the purge records' key> <now, ms>`) runs before the tag
    /// purge.
    Before(&'static str),
    /// This script runs after it.
    After(&'static str),
    /// Redis restarts empty after it.
    Restart,
}

/// What a replica with a disk finds after it was down while another purged a tag: 50 keys
/// `d<i>~gone` and 50 keys `kept<i>`, filled on b (disk, memory off) before it went down; `env`
/// added to b's. The origin fetches b made after the restart, and the keys it answered from
/// its disk.
async fn back_after(meanwhile: Meanwhile, env_more: &[(&'static str, &'static str)]) -> (u64, Vec<String>) {
    let mut redis = Redis::start().await;
    let origin = Origin::start(&[]).await;
    origin.headers(&[("Surrogate-Key", "{tags}")]).await;
    let dir = tempfile::tempdir().unwrap();
    let template = origin.template();
    let disk_env = env(dir.path(), false);
    let mut with_disk = refs(&disk_env);
    with_disk.push(("ORIGIN_URL", &template));
    with_disk.extend_from_slice(env_more);
    let keys: Vec<String> = (0..50)
        .map(|i| format!("d{i}~gone"))
        .chain((0..50).map(|i| format!("kept{i}")))
        .collect();
    let [b] = services_on(&redis.url(), &with_disk).await;
    for key in &keys {
        assert_eq!(b.get(key).await.1, "cache-layer; fwd=miss; stored");
    }
    stop(b).await;
    let eval = |redis: &Redis, script: &str| {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        redis.cli(&["EVAL", script, "1", "cache-layer:v1:purges", &now_ms.to_string()]);
    };
    if let Meanwhile::Before(script) = meanwhile {
        eval(&redis, script);
    }
    let plain = [("ORIGIN_URL", template.as_str()), ("ADMIN_TOKEN", TOKEN)];
    let [a] = services_on(&redis.url(), &plain).await;
    assert_eq!(purge(&a, "/tags/gone").await, 200);
    drop(a);
    match meanwhile {
        Meanwhile::After(script) => eval(&redis, script),
        Meanwhile::Restart => redis.restart().await,
        Meanwhile::Nothing | Meanwhile::Before(_) => {}
    }
    let [b] = services_on(&redis.url(), &with_disk).await;
    let served = origin.served().await;
    let mut from_disk = Vec::new();
    for key in &keys {
        let (code, status, _) = b.get(key).await;
        assert_eq!(code, 200);
        if status.ends_with("detail=disk") {
            from_disk.push(key.clone());
        }
    }
    (origin.served().await - served, from_disk)
}

/// The keys [`back_after`] fills that the tag purge spares.
fn spared() -> Vec<String> {
    (0..50).map(|i| format!("kept{i}")).collect()
}

#[tokio::test]
async fn a_disk_back_from_away_keeps_what_the_purges_it_missed_spare() {
    assert_eq!(back_after(Meanwhile::Nothing, &[]).await, (50, spared()));
}

#[tokio::test]
async fn a_disk_whose_purge_records_redis_lost_serves_nothing_they_could_have_purged() {
    // Redis restarts empty while b is down (the chart's Redis without persistence, on a pod
    // restart): the record of the tag purge is gone with it. b cannot tell what was purged, so
    // nothing from before is served from its disk.
    let (fetched, from_disk) = back_after(Meanwhile::Restart, &[]).await;
    assert_eq!((fetched, from_disk.len()), (100, 0), "{from_disk:?}");
}

#[tokio::test]
async fn a_disk_whose_purge_records_were_trimmed_drops_what_was_stored_before_the_cut() {
    // More purges were made than Redis keeps records of (100,000): the oldest were dropped,
    // the tag purge among them, and the cut is marked just before now. b drops what was stored
    // before the cut (before, it read no record at all and served every purged entry).
    let fill = "for i = 0, 99999 do redis.call('zadd', KEYS[1], ARGV[1] - 1000 + i % 1000, 'hard\\nkey\\nother' .. i) end \
                redis.call('zrem', KEYS[1], 'hard\\ntag\\ngone') \
                redis.call('zadd', KEYS[1], ARGV[1] - 1, '!trimmed') return 1";
    let (fetched, from_disk) = back_after(Meanwhile::After(fill), &[]).await;
    // The purged ones fetched again, the others read from Redis (which holds them still).
    assert_eq!((fetched, from_disk.len()), (50, 0), "{from_disk:?}");
}

#[tokio::test]
async fn a_disk_reads_every_purge_record_however_long_and_keeps_what_they_spare() {
    // 15,000 records of 1,000-byte keys (15 MB, three to a score) before the tag purge's: one
    // command reading them all outlasted the response timeout (here 100 ms), and b then served
    // every purged entry. Read a page at a time, the tag purge is found, and the entries it
    // spares stay on the disk.
    let fill = "local pad = string.rep('k', 990) \
                for i = 0, 14999 do redis.call('zadd', KEYS[1], ARGV[1] - 60000 + math.floor(i / 3), 'hard\\nkey\\n' .. pad .. i) end return 1";
    let slow = [("REDIS_RESPONSE_TIMEOUT_MS", "100")];
    assert_eq!(back_after(Meanwhile::Before(fill), &slow).await, (50, spared()));
}

#[tokio::test]
async fn a_fetch_overtaken_by_a_purge_stays_out_of_the_disk() {
    let origin = Origin::start(&[("STUB_LATENCY_MS", "1500")]).await;
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path(), false);
    let s = start(&origin, &env).await;
    let url = s.item_url("slow");
    let fetch = tokio::spawn(async move { client().get(url).send().await.unwrap().status() });
    origin.wait_served(1).await;
    assert_eq!(purge(&s, "/items/slow").await, 204);
    assert_eq!(fetch.await.unwrap(), 200);
    origin.set("ok", 0).await;
    assert_eq!(s.get("slow").await.1, "cache-layer; fwd=miss; stored");
    assert_eq!(origin.served().await, 2);
}

#[tokio::test]
async fn a_disk_that_goes_away_degrades_to_no_disk_tier_and_is_reopened() {
    let origin = Origin::start(&[]).await;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("volume");
    let env = env(&dir, false);
    let s = start(&origin, &env).await;
    assert_eq!(s.get("x").await.1, "cache-layer; fwd=miss; stored");
    assert!(s.get("x").await.1.ends_with("detail=disk"));

    std::fs::remove_dir_all(&dir).unwrap();
    let h = wait_disk(&s, "down").await;
    assert_eq!(h["status"], "degraded");
    assert!(s.metric("disk_errors_total{operation=\"probe\"").await >= 1.0);
    assert_eq!(s.metric("disk_cache_up").await, 0.0);
    // Requests go on without it: every one a fetch (no memory tier here), none a 5xx, and none
    // told `stored` (nothing kept them).
    for _ in 0..3 {
        let (code, status, _) = s.get("x").await;
        assert_eq!(
            (code, status.as_str()),
            (200, "cache-layer; fwd=miss; detail=declined")
        );
    }
    // A purge while the disk is down, without Redis, is recorded nowhere that outlives a
    // restart: applied, and answered 503 with a message that says so.
    for path in ["/items/x", "/tags/t"] {
        let (status, body) = purge_answer(&s, path).await;
        assert_eq!(status, 503, "{path}");
        assert_eq!(body["error"], "purge_incomplete");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("no record of it outlives a restart"),
            "{body}"
        );
    }
    // A volume that went away is not recreated beneath it by the service.
    assert!(!dir.exists());

    std::fs::create_dir(&dir).unwrap();
    wait_disk(&s, "ok").await;
    // The purges noted while it was down reached its purge file before it served again.
    let file = std::fs::read_to_string(dir.join("cache-layer-purges.jsonl")).unwrap();
    assert!(file.contains(r#""key","x"]"#), "{file}");
    assert!(file.contains(r#""tag","t"]"#), "{file}");
    assert_eq!(s.get("y").await.1, "cache-layer; fwd=miss; stored");
    assert!(s.get("y").await.1.ends_with("detail=disk"));
}

#[tokio::test]
async fn a_directory_that_cannot_be_written_leaves_the_service_up_without_the_tier() {
    let origin = Origin::start(&[]).await;
    // procfs takes no new files, even from root: a read-only disk.
    let env = env(Path::new("/proc/cache-layer-disk"), true);
    let s = start(&origin, &env).await;
    let h = wait_disk(&s, "down").await;
    assert_eq!(h["status"], "degraded");
    assert_eq!(s.get("a").await.1, "cache-layer; fwd=miss; stored");
    assert!(s.get("a").await.1.ends_with("detail=memory"));
    assert!(s.metric("disk_errors_total{operation=\"probe\"").await >= 1.0);
}

#[tokio::test]
async fn corrupt_files_on_disk_are_never_served() {
    let origin = Origin::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path(), false);
    let s = start(&origin, &env).await;
    for i in 0..20 {
        assert_eq!(s.get(&format!("k{i}")).await.0, 200);
    }
    stop(s).await;
    // Overwrite every byte of every file of entries (foyer's, the small entries' pages) with
    // garbage.
    let mut garbled = 0;
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let path = f.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("foyer") || name == "cache-layer-buckets" {
            let len = std::fs::metadata(&path).unwrap().len() as usize;
            let junk: Vec<u8> = (0..len).map(|i| (i * 7 + 13) as u8).collect();
            std::fs::write(&path, junk).unwrap();
            garbled += 1;
        }
    }
    assert!(garbled > 0);
    let s = start(&origin, &env).await;
    let before = origin.served().await;
    for i in 0..20 {
        let (code, status, body) = s.get(&format!("k{i}")).await;
        assert_eq!(code, 200);
        assert_eq!(status, "cache-layer; fwd=miss; stored", "k{i}");
        assert_eq!(body["source"], "origin");
    }
    assert_eq!(origin.served().await, before + 20);
}

/// A 16 MiB tmpfs mounted in a temporary directory, unmounted when dropped; `None` (with a
/// loud line) where this process may not mount one (not root: CI is).
struct Tmpfs {
    mnt: std::path::PathBuf,
    _root: tempfile::TempDir,
}

impl Tmpfs {
    fn mount() -> Option<Tmpfs> {
        let root = tempfile::tempdir().unwrap();
        let mnt = root.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs", mnt.to_str().unwrap()])
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            // Needs root with CAP_SYS_ADMIN, which CI has; say so loudly where it is missing.
            eprintln!("SKIPPED: cannot mount a tmpfs here (not root?): the full-disk test did not run");
            return None;
        }
        Some(Tmpfs { mnt, _root: root })
    }

    /// Takes every free byte but `spare` with a file (`filler`).
    fn fill(&self, spare: &str) {
        let filler = self.mnt.join("filler");
        let _ = Command::new("dd")
            .args([
                "if=/dev/zero",
                &format!("of={}", filler.display()),
                "bs=1M",
                "count=64",
            ])
            .stderr(std::process::Stdio::null())
            .status();
        if spare != "0" {
            let cut = Command::new("truncate")
                .args(["-s", &format!("-{spare}"), filler.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(cut.success());
        }
    }

    fn empty(&self) {
        std::fs::remove_file(self.mnt.join("filler")).unwrap();
    }
}

/// A tmpfs, an origin, and the service with its disk tier on the tmpfs (no memory tier), once
/// the tier is open; `None` where no tmpfs can be mounted.
async fn on_tmpfs() -> Option<(Tmpfs, Origin, Service)> {
    let fs = Tmpfs::mount()?;
    let origin = Origin::start(&[]).await;
    let s = start(&origin, &env(&fs.mnt.join("cache"), false)).await;
    wait_disk(&s, "ok").await;
    Some((fs, origin, s))
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

#[tokio::test]
async fn a_full_filesystem_takes_the_tier_down_until_it_has_room_again() {
    let Some((fs, _origin, s)) = on_tmpfs().await else {
        return;
    };
    let (_, status, first) = s.get("a").await;
    assert_eq!(status, "cache-layer; fwd=miss; stored");
    assert!(s.get("a").await.1.ends_with("detail=disk"));

    // Full: a file takes every free byte.
    fs.fill("0");
    wait_disk(&s, "down").await;
    assert_eq!(s.get("b").await.0, 200);
    // Fetched anew while the disk cannot take it: the disk's copy is older than this one.
    let (_, _, newer) = s.get("a").await;
    assert_ne!(newer["value"], first["value"]);
    fs.empty();
    wait_disk(&s, "ok").await;
    let (_, status, back) = s.get("a").await;
    assert_ne!(
        back["value"], first["value"],
        "the version fetched before the outage is not served after a newer one ({status})"
    );

    assert_eq!(s.get("d").await.1, "cache-layer; fwd=miss; stored");
    assert!(s.get("d").await.1.ends_with("detail=disk"));
    drop(s);
}

#[tokio::test]
async fn a_block_the_disk_engine_cannot_write_is_counted_and_takes_the_tier_down() {
    // foyer writes entries in the background and only logs a failed block write: the volume
    // keeps room for the probe's small file, not for the engine's blocks, so only the engine's
    // own failure can tell.
    let Some((fs, _origin, s)) = on_tmpfs().await else {
        return;
    };
    let write_errors = r#"disk_errors_total{operation="write""#;
    assert_eq!(s.metric(write_errors).await, 0.0);
    fs.fill("64K");

    let mut i = 0;
    let health = eventually("the engine's failed write to take the tier down", || {
        i += 1;
        let (s, key) = (&s, format!("full{i}"));
        async move {
            assert_eq!(s.get(&key).await.0, 200, "{key}: answered from the origin");
            let h = s.json("/health").await;
            (h["tiers"]["disk"] == "down").then_some(h)
        }
    })
    .await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        s.metric(write_errors).await >= 1.0,
        "the failed block write is counted"
    );
    assert_eq!(s.metric("disk_cache_up").await, 0.0);
    // Requests go on without it.
    let (code, status, _) = s.get("after").await;
    assert_eq!(code, 200);
    assert!(
        status.starts_with("cache-layer; fwd=miss; detail="),
        "not stored: {status}"
    );

    fs.empty();
    wait_disk(&s, "ok").await;
    assert_eq!(s.get("back").await.1, "cache-layer; fwd=miss; stored");
    drop(s);
}

#[tokio::test]
async fn shutdown_waits_for_a_fetch_whose_client_left_before_the_disk_closes() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start(&[("STUB_LATENCY_MS", "1500")]).await;
    let env = env(dir.path(), false);
    let s = start(&origin, &env).await;
    // The client gives up at once; the fetch goes on without it.
    let quick = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(200))
        .no_proxy()
        .build()
        .unwrap();
    assert!(quick.get(s.item_url("late")).send().await.is_err());
    origin.wait_served(1).await;
    stop(s).await;
    // Restarted on the same disk: the fetch finished and was written before the tier closed.
    origin.set("ok", 0).await;
    let s = start(&origin, &env).await;
    let (status, cache, _) = s.get("late").await;
    assert_eq!(status, 200);
    assert!(cache.ends_with("detail=disk"), "{cache}");
    assert_eq!(origin.served().await, 1);
}

#[tokio::test]
async fn a_second_process_on_the_same_directory_is_refused_at_start_up() {
    let origin = Origin::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path(), true);
    let first = start(&origin, &env).await;
    assert_eq!(first.get("k").await.0, 200);
    // Another process on the same directory: exit 2, naming the setting.
    let mut second: Vec<(&'static str, String)> = env.clone();
    second.push(("ORIGIN_URL", origin.template()));
    second.push((
        "LISTEN_ADDR",
        format!("127.0.0.1:{}", crate::harness::free_port()),
    ));
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = crate::harness::service_command(&refs(&second));
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("DISK_CACHE_DIR") && stderr.contains("in use by another process"),
        "{stderr}"
    );
    // The first one is unharmed, and once it is gone the directory is free again.
    assert!(first.get("k").await.1.ends_with("detail=memory"));
    stop(first).await;
    let again = start(&origin, &env).await;
    assert!(again.get("k").await.1.ends_with("detail=disk"));
}

#[tokio::test]
async fn a_directory_written_in_another_format_starts_empty_and_is_never_misread() {
    let origin = Origin::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path(), false);
    let s = start(&origin, &env).await;
    assert_eq!(s.get("kept").await.1, "cache-layer; fwd=miss; stored");
    stop(s).await;
    let format = dir.path().join("cache-layer-format");
    let written = std::fs::read_to_string(&format).unwrap();
    assert!(written.starts_with("cache-layer disk"), "{written}");
    // The same format: the entry comes back from the disk.
    let s = start(&origin, &env).await;
    assert!(s.get("kept").await.1.ends_with("detail=disk"));
    stop(s).await;
    // Another format (an upgrade of the engine or the encoding): the tier starts empty.
    std::fs::write(&format, "cache-layer disk 0; foyer 0.1; entry v0\n").unwrap();
    let s = start(&origin, &env).await;
    let served = origin.served().await;
    assert_eq!(s.get("kept").await.1, "cache-layer; fwd=miss; stored");
    assert_eq!(origin.served().await, served + 1);
    assert_eq!(
        std::fs::read_to_string(&format).unwrap(),
        written,
        "the file names this format again"
    );
    stop(s).await;
}

#[tokio::test]
async fn admission_counts_outlive_a_restart() {
    let origin = Origin::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = env(dir.path(), false);
    for (k, v) in env.iter_mut() {
        if *k == "DISK_CACHE_ADMIT_MIN_REQUESTS" {
            *v = "2".to_owned();
        }
    }
    // Larger entries, which admission guards (a small one fills free room in its bucket).
    origin.set("bytes:3000", 0).await;
    // Asked once, then a restart: the key is not on the disk (seen once only)...
    let s = start(&origin, &env).await;
    assert_eq!(s.get("twice").await.0, 200);
    stop(s).await;
    assert!(
        dir.path().join("cache-layer-admission").exists(),
        "saved at shutdown"
    );
    // ... but the second request after it counts as the second: the fill goes to disk.
    let s = start(&origin, &env).await;
    assert_eq!(s.get("twice").await.0, 200);
    stop(s).await;
    let s = start(&origin, &env).await;
    assert!(
        s.get("twice").await.1.ends_with("detail=disk"),
        "admitted on its second request across the restart"
    );
    stop(s).await;
    // A file that does not fit (another layout, or damaged) is ignored: a key asked once now
    // stays off the disk.
    std::fs::write(dir.path().join("cache-layer-admission"), b"junk").unwrap();
    let s = start(&origin, &env).await;
    assert_eq!(s.get("once").await.1, "cache-layer; fwd=miss; detail=declined");
    stop(s).await;
}
