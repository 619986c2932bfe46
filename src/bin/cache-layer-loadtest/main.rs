//! `cache-layer-loadtest`: shows what the cache buys. With no options it is the seed's
//! `load_test.py` (50 sequential requests to `http://localhost:5000`, one line each, then the
//! seed's summary); with options it is a load generator: connections, a request count or a
//! duration, a Zipf or uniform key space, a warm-up, an open-loop target rate, a progress bar,
//! and a summary with hit rate by tier, latency percentiles from a histogram, errors by kind and
//! the origin fetches saved (`--json` for machines).
//!
//! It only ever sends requests to the base URL it is given, and every run is bounded in count
//! and time. `--batch N` sends `POST /items:batch` with N keys per request instead. `--help`
//! lists the options.
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
    // This thread's runtime resolves the target and reads its /metrics; the load itself runs on
    // the threads of `run::run_phases`.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cache-layer-loadtest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(args.plan()) {
        Ok(plan) => load_test(&plan, &runtime),
        Err(problem) => {
            eprintln!("cache-layer-loadtest: {problem}");
            ExitCode::from(2)
        }
    }
}

fn load_test(plan: &Plan, runtime: &tokio::runtime::Runtime) -> ExitCode {
    run::watch_interrupts();
    let mut phases = Vec::new();
    if let Some(duration) = plan.warmup {
        phases.push(Phase {
            requests: None,
            duration,
            per_request: false,
            progress: plan.progress,
        });
    }
    let measured = phases.len();
    phases.push(Phase {
        requests: plan.requests,
        duration: plan.duration,
        per_request: plan.per_request,
        progress: plan.progress,
    });
    let mut metrics = Conn::new(plan.addr, plan.host.clone(), plan.timeout);
    let (mut before, mut after) = (None, None);
    let mut results = run::run_phases(plan, &phases, |at| {
        if at == measured {
            before = runtime.block_on(client::origin_fetches(&mut metrics));
        } else if at == phases.len() && before.is_some() {
            after = runtime.block_on(client::origin_fetches(&mut metrics));
        }
    });
    let (stats, elapsed) = results.pop().expect("the measured phase ran");
    let warmup_requests = results.first().map_or(0, |(w, _)| w.requests());
    let report = stats.report(RunFacts {
        url: plan.url.clone(),
        pattern: plan.pattern.as_str(),
        concurrency: plan.concurrency,
        target_rps: plan.rate,
        warmup_requests,
        elapsed,
        origin_fetches: before.zip(after).map(|(b, a)| a.saturating_sub(b)),
        interrupted: run::interrupted(),
        batch: plan.batch,
    });
    if plan.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("cache-layer-loadtest: {e}"),
        }
    } else {
        report.print_text();
    }
    if report.interrupted {
        ExitCode::from(130)
    } else if report.requests == 0 {
        eprintln!(
            "cache-layer-loadtest: no request was answered within the run (the target hangs, or --duration is shorter than one answer)"
        );
        ExitCode::FAILURE
    } else if report.errors == report.requests {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
