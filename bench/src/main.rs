//! The `herald-bench` binary: a scenario run, the results table, or a worker process.
//! Exit status: 0 when the run was correct, 2 when it completed but was not (a subscriber
//! missing, an event lost, duplicated or out of order), 1 on an error.

use anyhow::Context as _;
use clap::Parser as _;
use herald_bench::cli::{Cli, Command, Scenario};
use herald_bench::report::{Outcome, table};
use herald_bench::{coordinator, worker};

fn main() -> std::process::ExitCode {
    match run() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(2),
        Err(e) => {
            eprintln!("herald-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let cli = Cli::parse();
    let (scenario, args) = match cli.command {
        Command::Worker => return worker::main().map(|()| true),
        Command::Table(t) => {
            let mut outcomes = Vec::new();
            for f in &t.files {
                let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
                let o: Outcome = serde_json::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
                outcomes.push(o);
            }
            print!("{}", table(&outcomes));
            return Ok(true);
        }
        Command::Idle(a) => (Scenario::Idle, a),
        Command::Fanout(a) => (Scenario::Fanout, a),
        Command::Latency(a) => (Scenario::Latency, a),
        Command::Private(a) => (Scenario::Private, a),
        Command::Cluster(a) => (Scenario::Cluster, a),
        Command::Nodes(a) => (Scenario::Nodes, a),
    };
    let json = args.json;
    let outcome = coordinator::main(scenario, args)?;
    if json {
        eprint!("{}", outcome.human());
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        print!("{}", outcome.human());
    }
    Ok(outcome.ok)
}
