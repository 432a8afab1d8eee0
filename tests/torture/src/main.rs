//! Torture and crash-recovery tests of the `idempotency` extension, over real connections to a
//! scratch cluster that `scripts/torture.sh` starts.
//!
//!   idempotency-torture load  --host DIR --port P [--connections 32 --requests 100000 --keys 16 ...]
//!   idempotency-torture check --host DIR --port P        (the checker alone, on a finished load)
//!   idempotency-torture crash --host DIR --port P --pgdata DIR/data --pgcluster scripts/pgcluster.sh [--cycles 20 ...]
//!
//! `load` runs many connections against a few hot keys and logs what every request was
//! answered into a table; then `check` (an independent checker that reads only the database)
//! asserts the guarantees. `crash` kills the postmaster or a backend with SIGKILL while flows
//! run, restarts, and checks durability and takeover after each cycle. Each exits non-zero
//! when it found an anomaly.

mod check;
mod crash;
mod load;
mod util;

use std::collections::HashMap;
use std::process::ExitCode;

/// `--name value` options, with defaults supplied by the caller.
pub struct Opts(HashMap<String, String>);

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut m = HashMap::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let name = a
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {a:?}"))?;
            let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            m.insert(name.to_string(), v.clone());
        }
        Ok(Opts(m))
    }

    pub fn str(&self, name: &str, default: &str) -> String {
        self.0
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }

    pub fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.0.get(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("--{name}: not a number: {v}");
                std::process::exit(2)
            }),
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("usage: idempotency-torture load|check|crash --host DIR --port PORT [options]");
        return ExitCode::from(2);
    };
    let opts = match Opts::parse(rest) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("idempotency-torture: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cmd.as_str() {
        "load" => load::run(&opts),
        "check" => check::run(&opts),
        "crash" => crash::run(&opts),
        _ => Err(format!("unknown command {cmd:?}")),
    };
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(anomalies) => {
            eprintln!("idempotency-torture {cmd}: {anomalies} anomalies");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("idempotency-torture {cmd}: {e}");
            ExitCode::from(3)
        }
    }
}
