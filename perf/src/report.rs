//! What a run measured: IOPS, bandwidth and latency percentiles over the
//! whole run, and a per-second series (IOPS and p99), as text and JSON.

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::time::Duration;

/// Latencies are recorded in nanoseconds, up to a minute, 3 significant
/// digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

pub struct Recorder {
    io_bytes: u64,
    all: Histogram<u64>,
    /// Per elapsed second: completions and their latencies.
    seconds: Vec<Histogram<u64>>,
    pub errors: u64,
    pub mismatches: u64,
}

impl Recorder {
    pub fn new(io_bytes: u64) -> Recorder {
        Recorder { io_bytes, all: histogram(), seconds: Vec::new(), errors: 0, mismatches: 0 }
    }

    /// One I/O completed at `at` (since the run began) after `latency`.
    pub fn record(&mut self, at: Duration, latency: Duration) {
        let ns = (latency.as_nanos() as u64).max(1);
        self.all.saturating_record(ns);
        let second = at.as_secs() as usize;
        while self.seconds.len() <= second {
            self.seconds.push(histogram());
        }
        self.seconds[second].saturating_record(ns);
    }

    pub fn finish(self, name: &str, elapsed: Duration) -> Report {
        let secs = elapsed.as_secs_f64();
        let count = self.all.len();
        let us = |ns: u64| ns as f64 / 1000.0;
        let series = self
            .seconds
            .iter()
            .enumerate()
            .map(|(t, h)| Second { t: t as u64 + 1, iops: h.len() as f64, p99_us: us(h.value_at_quantile(0.99)) })
            .collect();
        Report {
            name: name.to_owned(),
            seconds: secs,
            ios: count,
            iops: count as f64 / secs,
            mib_s: (count * self.io_bytes) as f64 / secs / (1 << 20) as f64,
            avg_us: self.all.mean() / 1000.0,
            p50_us: us(self.all.value_at_quantile(0.50)),
            p99_us: us(self.all.value_at_quantile(0.99)),
            p999_us: us(self.all.value_at_quantile(0.999)),
            max_us: us(self.all.max()),
            errors: self.errors,
            mismatches: self.mismatches,
            series,
        }
    }
}

pub struct Second {
    pub t: u64,
    pub iops: f64,
    pub p99_us: f64,
}

pub struct Report {
    pub name: String,
    pub seconds: f64,
    pub ios: u64,
    pub iops: f64,
    pub mib_s: f64,
    pub avg_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub errors: u64,
    pub mismatches: u64,
    pub series: Vec<Second>,
}

impl Report {
    pub fn line(&self) -> String {
        format!(
            "{:<5} {:>10.0} IOPS {:>9.1} MiB/s  lat us: avg {:>7.1} p50 {:>7.1} p99 {:>8.1} p99.9 {:>8.1} max {:>9.1}{}",
            self.name,
            self.iops,
            self.mib_s,
            self.avg_us,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            if self.errors + self.mismatches > 0 {
                format!("  ERRORS {} MISMATCHES {}", self.errors, self.mismatches)
            } else {
                String::new()
            }
        )
    }

    pub fn series_line(&self) -> String {
        let cells: Vec<String> =
            self.series.iter().map(|s| format!("{:.0}k/{:.0}", s.iops / 1000.0, s.p99_us)).collect();
        format!("{:<5} per second (k IOPS / p99 us): {}", self.name, cells.join(" "))
    }

    pub fn json(&self) -> Value {
        json!({
            "seconds": self.seconds,
            "ios": self.ios,
            "iops": self.iops,
            "mib_s": self.mib_s,
            "latency_us": {"avg": self.avg_us, "p50": self.p50_us, "p99": self.p99_us,
                           "p99_9": self.p999_us, "max": self.max_us},
            "errors": self.errors,
            "mismatches": self.mismatches,
            "series": self.series.iter().map(|s| json!({"t": s.t, "iops": s.iops, "p99_us": s.p99_us}))
                .collect::<Vec<_>>(),
        })
    }
}
