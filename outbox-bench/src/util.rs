//! Errors, statistics and formatting shared by every figure.

use std::fmt::{self, Display};
use std::time::Duration;

/// Everything that can stop the benchmark: one line of text.
#[derive(Debug)]
pub(crate) struct Error(String);

impl Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl Error {
    pub(crate) fn new(message: impl Display) -> Self {
        // One line, whatever the source printed.
        Self(message.to_string().replace('\n', " "))
    }
}

pub(crate) type Res<T> = Result<T, Error>;

/// Adds what was being done to an error from a client library.
pub(crate) trait Context<T> {
    fn context(self, what: impl Display) -> Res<T>;
}

impl<T, E: Display> Context<T> for Result<T, E> {
    fn context(self, what: impl Display) -> Res<T> {
        self.map_err(|err| Error::new(format!("{what}: {err}")))
    }
}

/// Returns early with a formatted [`Error`].
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::util::Error::new(format!($($arg)*)))
    };
}
pub(crate) use bail;

/// A URL with any password replaced by `***`, for messages.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{path}")
            } else {
                format!("{scheme}://{user}@{host}{path}")
            }
        }
        None => url.to_owned(),
    }
}

/// `n` as a float, for rates and means.
#[allow(clippy::cast_precision_loss)] // Reason: counts in a benchmark stay far below 2^52.
pub(crate) fn float(n: usize) -> f64 {
    n as f64
}

/// Events per second.
pub(crate) fn rate(events: usize, elapsed: Duration) -> f64 {
    float(events) / elapsed.as_secs_f64().max(1e-9)
}

/// The median (mean of the two middle values for an even count).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => f64::midpoint(sorted[n / 2 - 1], sorted[n / 2]),
    }
}

/// Nearest-rank percentile of `sorted` (ascending), in per mille (500 = p50).
pub(crate) fn percentile(sorted: &[f64], per_mille: usize) -> f64 {
    let rank = (sorted.len() * per_mille).div_ceil(1000).max(1);
    sorted.get(rank - 1).copied().unwrap_or(f64::NAN)
}

/// Latencies (ms): p50, p99, max.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spread {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    pub(crate) mean: f64,
}

impl Spread {
    pub(crate) fn of(samples_ms: &[f64]) -> Self {
        let mut sorted = samples_ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        Self {
            p50: percentile(&sorted, 500),
            p99: percentile(&sorted, 990),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            mean: sorted.iter().sum::<f64>() / float(sorted.len().max(1)),
        }
    }
}

impl Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms  (mean {:.3} ms)",
            self.p50, self.p99, self.max, self.mean
        )
    }
}

/// `12345.6` as `12,346`.
pub(crate) fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return format!("{value}");
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if value < 0.0 && digits != "0" {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A count as `100,000`.
pub(crate) fn count(n: usize) -> String {
    thousands(float(n))
}

/// Whether `ratio` meets a "at least" target: the tag printed beside it.
pub(crate) fn at_least(value: f64, target: f64) -> &'static str {
    if value >= target { "meets" } else { "MISSES" }
}

/// Whether `value` meets an "at most" target.
pub(crate) fn at_most(value: f64, target: f64) -> &'static str {
    if value <= target { "meets" } else { "MISSES" }
}

/// Milliseconds of a duration, as a float.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Prints per-repetition values compactly: `[2,512 2,601 2,488]`.
pub(crate) fn reps(values: &[f64]) -> String {
    let shown: Vec<String> = values.iter().map(|v| thousands(*v)).collect();
    format!("[{}]", shown.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_thousands() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
    }

    #[test]
    fn medians_and_percentiles() {
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < 1e-9);
        assert!((median(&[4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-9);
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!((percentile(&sorted, 500) - 50.0).abs() < 1e-9);
        assert!((percentile(&sorted, 990) - 99.0).abs() < 1e-9);
        assert!((percentile(&sorted, 1000) - 100.0).abs() < 1e-9);
        assert!(percentile(&[], 500).is_nan());
    }

    #[test]
    fn hides_passwords() {
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact("postgres://root@127.0.0.1:5432/test"),
            "postgres://root@127.0.0.1:5432/test"
        );
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }
}
