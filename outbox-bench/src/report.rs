//! How results are printed.

use crate::util::{at_least, at_most, median, percentile, reps, thousands};

/// Throughput measurements (events/s) of one mode.
pub(crate) struct Throughput {
    label: String,
    values: Vec<f64>,
}

impl Throughput {
    pub(crate) fn new(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            values: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, events_per_second: f64) {
        self.values.push(events_per_second);
    }

    pub(crate) fn median(&self) -> f64 {
        median(&self.values)
    }

    pub(crate) fn print(&self) {
        let detail = if self.values.len() <= 5 {
            format!("reps {}", reps(&self.values))
        } else {
            let mut sorted = self.values.clone();
            sorted.sort_by(f64::total_cmp);
            format!(
                "middle half {}..{} ({} slices)",
                thousands(percentile(&sorted, 250)),
                thousands(percentile(&sorted, 750)),
                sorted.len()
            )
        };
        println!(
            "  {:<46} {:>11} events/s   {detail}",
            self.label,
            thousands(self.median()),
        );
    }
}

/// `<figure> ratio <what> = 0.873  (target >= 0.80: meets)`.
pub(crate) fn print_ratio(figure: &str, value: f64, op: &str, target: f64, what: &str) {
    let verdict = if op == ">=" {
        at_least(value, target)
    } else {
        at_most(value, target)
    };
    println!("  {figure} ratio {what} = {value:.3}   (target {op} {target:.2}: {verdict})");
}
