//! `cache-layer-loadtest`: shows what the cache buys. With no options it is the seed's
//! `load_test.py` (50 sequential requests to `http://localhost:5000`, one line each, then the
//! seed's summary); with options it is a load generator: connections, a request count or a
//! duration, a Zipf or uniform key space, a warm-up, an open-loop target rate, a progress bar,
//! and a summary with hit rate by tier, latency percentiles from a histogram, errors by kind and
//! the origin fetches saved (`--json` for machines).
//!
//! It only ever sends requests to the base URL it is given, and every run is bounded in count
//! and time. `--help` lists the options.
//!
//! Layout: `args` (the command line, checked into a plan), `workload` (which key each request
//! asks for), `client` (one HTTP/1.1 connection per worker; classifying answers), `run` (the
//! request loop), `stats` (tallies, histograms and the report).

mod args;
mod client;
mod run;
mod stats;
mod workload;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Args, Plan};
use crate::client::Conn;
use crate::run::Phase;
use crate::stats::RunFacts;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cache-layer-loadtest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match args.plan().await {
            Ok(plan) => load_test(plan).await,
            Err(problem) => {
                eprintln!("cache-layer-loadtest: {problem}");
                ExitCode::from(2)
            }
        }
    })
}

async fn load_test(plan: Plan) -> ExitCode {
    let mut conns = run::connect_all(&plan, plan.concurrency).await;
    let mut warmup_requests = 0;
    if let Some(duration) = plan.warmup {
        let warmup = Phase {
            requests: None,
            duration,
            per_request: false,
            progress: plan.progress,
        };
        let (reused, stats, _) = run::run(&plan, warmup, conns, plan.seed ^ 0x5eed).await;
        warmup_requests = stats.requests();
        conns = reused;
    }
    let mut metrics = Conn::new(plan.addr, plan.host.clone(), plan.timeout);
    let before = client::origin_fetches(&mut metrics).await;
    let measured = Phase {
        requests: plan.requests,
        duration: plan.duration,
        per_request: plan.per_request,
        progress: plan.progress,
    };
    let (_, stats, elapsed) = run::run(&plan, measured, conns, plan.seed).await;
    let after = match before {
        Some(_) => client::origin_fetches(&mut metrics).await,
        None => None,
    };
    let report = stats.report(RunFacts {
        url: plan.url.clone(),
        pattern: plan.pattern.as_str(),
        concurrency: plan.concurrency,
        target_rps: plan.rate,
        warmup_requests,
        elapsed,
        origin_fetches: before.zip(after).map(|(b, a)| a.saturating_sub(b)),
    });
    if plan.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("cache-layer-loadtest: {e}"),
        }
    } else {
        report.print_text();
    }
    if report.requests > 0 && report.errors == report.requests {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
