//! The verdict: RSS growth, idle values, unexpected outcomes; the CSV.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::load::Tally;
use crate::{Args, Sample};

fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// The verdict and its explanation.
pub(crate) fn judge(
    args: &Args,
    baseline: &Sample,
    load: &[Sample],
    last: &Sample,
    to_idle: Duration,
    tally: &Tally,
    stopped: Option<std::process::ExitStatus>,
) -> (String, bool) {
    let mut report = String::new();
    let mut pass = true;
    let duration = args.duration.as_secs_f64();
    let warm_up = (duration * 0.1).max(30.0).min(duration / 2.0);
    let steady: Vec<&Sample> = load.iter().filter(|s| s.at >= warm_up).collect();
    let third = steady.len() / 3;
    let (first, last_third) = if third == 0 {
        (0, 0)
    } else {
        let mut first: Vec<u64> = steady[..third].iter().map(|s| s.rss_kib).collect();
        let mut tail: Vec<u64> = steady[steady.len() - third..]
            .iter()
            .map(|s| s.rss_kib)
            .collect();
        (median(&mut first), median(&mut tail))
    };
    let rss_ok = third > 0 && (last_third as f64) <= first as f64 * 1.10;
    pass &= rss_ok;
    let peak = |f: fn(&Sample) -> f64| load.iter().map(f).fold(0.0, f64::max);
    let requests: u64 = tally.by_scenario.values().sum();
    let unexpected: u64 = tally.unexpected.values().sum();
    pass &= unexpected == 0;
    let idle = last.is_idle(baseline);
    pass &= idle;
    let clean_exit = stopped.is_some_and(|status| status.success());
    pass &= clean_exit;

    let _ = writeln!(
        report,
        "soak: {:.0} s of load, {} workers, {requests} requests ({:.0}/s), {} gateway requests counted",
        duration,
        args.workers,
        requests as f64 / duration,
        last.requests_total
    );
    for (scenario, count) in &tally.by_scenario {
        let _ = writeln!(report, "  {scenario:<22} {count}");
    }
    let _ = writeln!(report, "unexpected outcomes: {unexpected}");
    for (what, count) in &tally.unexpected {
        let _ = writeln!(report, "  {count} x {what}");
    }
    let _ = writeln!(
        report,
        "peaks under load: {} flights, {} subscribers, {} requests, {} connections, {} buffered bytes, {} fds",
        peak(|s| s.flights),
        peak(|s| s.subscribers),
        peak(|s| s.requests_active),
        peak(|s| s.connections),
        peak(|s| s.buffered),
        load.iter().map(|s| s.fds).max().unwrap_or(0)
    );
    let _ = writeln!(
        report,
        "RSS: idle {} KiB; after a {warm_up:.0} s warm-up, median of the first third {first} KiB, \
         of the last third {last_third} KiB ({:+.1}%), max {} KiB: {}",
        baseline.rss_kib,
        if first > 0 {
            (last_third as f64 / first as f64 - 1.0) * 100.0
        } else {
            0.0
        },
        load.iter().map(|s| s.rss_kib).max().unwrap_or(0),
        if rss_ok {
            "does not grow"
        } else {
            "GROWS (or too few samples)"
        }
    );
    let _ = writeln!(
        report,
        "after the load ({:.0} s to idle): {} flights, {} subscribers, {} requests, {} connections, \
         {} buffered bytes, {} fds (before the load: {}): {}",
        to_idle.as_secs_f64(),
        last.flights,
        last.subscribers,
        last.requests_active,
        last.connections,
        last.buffered,
        last.fds,
        baseline.fds,
        if idle { "idle" } else { "NOT IDLE" }
    );
    let _ = writeln!(
        report,
        "SIGTERM: {}",
        match stopped {
            Some(status) if status.success() => "drained, exit 0".to_owned(),
            Some(status) => format!("exit {status}"),
            None => "did not exit in 30 s".to_owned(),
        }
    );
    let _ = writeln!(report, "verdict: {}", if pass { "PASS" } else { "FAIL" });
    (report, pass)
}

pub(crate) fn write_csv(path: &Path, samples: &[Sample]) -> Result<(), String> {
    let mut csv = String::from(
        "seconds,rss_kib,fds,flights,subscribers,requests_active,connections,buffered_bytes,requests_total\n",
    );
    for s in samples {
        let _ = writeln!(
            csv,
            "{:.1},{},{},{},{},{},{},{},{}",
            s.at,
            s.rss_kib,
            s.fds,
            s.flights,
            s.subscribers,
            s.requests_active,
            s.connections,
            s.buffered,
            s.requests_total
        );
    }
    std::fs::write(path, csv).map_err(|e| format!("{}: {e}", path.display()))
}
