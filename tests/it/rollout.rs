//! A rolling restart, as a Deployment rollout makes one: three replicas on one Redis under
//! steady load, each in turn sent SIGTERM (and taken out of the load's rotation at that moment,
//! as endpoints are, racing the signal) and started again. The fleet stays warm: no request
//! fails, and the origin sees (almost) nothing, because the restarted replica finds the keys
//! in Redis and the others keep serving from memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::{Service, client, entry_key, with_redis_and_origin};

/// Keys the load cycles through (all fetched once before the rollout).
const KEYS: usize = 300;

/// Which replicas the load sends to (their base URLs), as a Service's endpoints would be.
type Rotation = Arc<Mutex<Vec<String>>>;

/// Requests the load made, by outcome (a status code, or "error" for a connection failure).
type Outcomes = Arc<Mutex<HashMap<String, u64>>>;

/// Four workers asking for the keys in turn, each request to the next replica in rotation.
fn load(
    rotation: &Rotation,
    outcomes: &Outcomes,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|w| {
            let (rotation, outcomes, stop) = (rotation.clone(), outcomes.clone(), stop.clone());
            tokio::spawn(async move {
                let c = client();
                let mut i = w * 7;
                while !stop.load(Ordering::Relaxed) {
                    let base = {
                        let r = rotation.lock().unwrap();
                        r[i % r.len()].clone()
                    };
                    let url = format!("{base}/items/k{}", i % KEYS);
                    let outcome = match c.get(url).send().await {
                        Ok(r) => r.status().as_u16().to_string(),
                        Err(_) => "error".to_owned(),
                    };
                    *outcomes.lock().unwrap().entry(outcome).or_default() += 1;
                    i += 1;
                }
            })
        })
        .collect()
}

#[tokio::test]
async fn a_rolling_restart_answers_every_request_and_keeps_the_origin_quiet() {
    let env = [("SHUTDOWN_DELAY_SECS", "1"), ("CACHE_TTL_SECS", "600")];
    let (redis, origin, replicas) = with_redis_and_origin::<3>(&[], &env).await;
    let mut replicas: Vec<Service> = replicas.into();
    let keys: Vec<String> = (0..KEYS).map(|k| format!("k{k}")).collect();
    let (status, _) = replicas[0].batch(&keys).await;
    assert_eq!(status, 200);
    // Every key in Redis before the rollout (its writes are made after the answer).
    let entries: Vec<String> = keys.iter().map(|k| entry_key(k)).collect();
    let mut exists = vec!["EXISTS"];
    exists.extend(entries.iter().map(String::as_str));
    redis.eventually_cli(&exists, &KEYS.to_string()).await;
    let warmed = origin.served().await;
    assert_eq!(warmed, KEYS as u64);

    let rotation: Rotation = Arc::new(Mutex::new(replicas.iter().map(|s| s.base.clone()).collect()));
    let (outcomes, stop): (Outcomes, _) = (Arc::default(), Arc::new(AtomicBool::new(false)));
    let workers = load(&rotation, &outcomes, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let redis_url = redis.url();
    let template = origin.template();
    for (i, replica) in replicas.iter_mut().enumerate() {
        // SIGTERM and out of rotation at once: requests already routed to it still land
        // within SHUTDOWN_DELAY_SECS, and those in flight finish in the drain.
        replica.terminate();
        rotation.lock().unwrap().retain(|b| *b != replica.base);
        let exit = replica.wait_exit().await;
        assert!(
            exit.success(),
            "replica {i} exits cleanly after its drain: {exit:?}"
        );
        let fresh = Service::start(&[
            ("REDIS_URL", redis_url.as_str()),
            ("ORIGIN_URL", template.as_str()),
            ("SHUTDOWN_DELAY_SECS", "1"),
            ("CACHE_TTL_SECS", "600"),
        ])
        .await;
        fresh.wait_status("/readyz", 200).await;
        fresh.wait_redis_up().await;
        rotation.lock().unwrap().push(fresh.base.clone());
        *replica = fresh;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    let outcomes = outcomes.lock().unwrap().clone();
    let answered = outcomes.get("200").copied().unwrap_or(0);
    assert!(answered > 1_000, "the load ran throughout: {outcomes:?}");
    assert_eq!(
        outcomes.len(),
        1,
        "every request answered 200 through the rollout: {outcomes:?}"
    );
    // Restarted replicas find every key in Redis: the origin sees nothing new.
    assert_eq!(
        origin.served().await,
        warmed,
        "no key went back to the origin during the rollout"
    );
}
