//! `memory` and `scale`: each drain runs in a child process (this binary,
//! re-executed with the hidden `__drain-child` subcommand), so its peak RSS
//! (`VmHWM` in `/proc/<pid>/status`) is the relay's alone.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use outbox::{Outbox, Publishers};

use crate::broker::Sink;
use crate::common::{
    Bench, Counter, Design, Noop, OrderPlaced, RawSql, connect_pg, drain_library, drain_raw, lib,
    order,
};
use crate::util::{Context, Res, bail, count, float, thousands};

/// The hidden subcommand.
pub(crate) const SUBCOMMAND: &str = "__drain-child";
/// How the parent hands the database URL to the child (not on the command line).
const URL_ENV: &str = "OUTBOX_BENCH_DATABASE_URL";

/// What one child reported.
#[derive(Debug, Clone, Copy)]
struct Drained {
    /// From the first publisher call to the end.
    elapsed: Duration,
    /// Peak RSS (kB) once connected, before draining.
    baseline_kb: u64,
    /// Peak RSS (kB) after draining.
    peak_kb: u64,
}

/// `VmHWM` of a process, in kB.
fn peak_rss_kb(pid: &str) -> Res<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).context(format!("reading {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context_none(&format!("no VmHWM line in {path}"))
}

trait OptionContext<T> {
    fn context_none(self, what: &str) -> Res<T>;
}

impl<T> OptionContext<T> for Option<T> {
    fn context_none(self, what: &str) -> Res<T> {
        self.ok_or_else(|| crate::util::Error::new(what))
    }
}

/// Runs one drain of `table` (`n` entries) in a child process.
fn spawn(database_url: &str, mode: &str, table: &str, n: usize) -> Res<Drained> {
    let exe = std::env::current_exe().context("locating the benchmark binary")?;
    let mut child = Command::new(exe)
        .args([SUBCOMMAND, mode, table, &n.to_string()])
        .env(URL_ENV, database_url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the relay child process")?;
    let pid = child.id().to_string();
    let stdout = child.stdout.take().context_none("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut next = |expect: &str| -> Res<String> {
        let line = lines
            .next()
            .context_none(&format!("the relay child exited before `{expect}`"))?
            .context("reading the child's output")?;
        match line.strip_prefix(expect) {
            Some(rest) => Ok(rest.trim().to_owned()),
            None => bail!("the relay child said {line:?}, expected `{expect} ..`"),
        }
    };
    let baseline_kb = next("ready")?.parse().context("the child's baseline")?;
    let nanos: u64 = next("done")?.parse().context("the child's drain time")?;
    // The child waits for us: its /proc entry is still there.
    let peak_kb = peak_rss_kb(&pid)?;
    drop(child.stdin.take());
    let status = child.wait().context("waiting for the relay child")?;
    if !status.success() {
        bail!("the relay child failed: {status}");
    }
    Ok(Drained {
        elapsed: Duration::from_nanos(nanos),
        baseline_kb,
        peak_kb,
    })
}

/// The child: drain `table` with the library relay (`lib`) or the raw
/// loop (`raw`), report, and wait until the parent has read `VmHWM`.
pub(crate) async fn child(args: &[String]) -> Res<()> {
    let [mode, table, n] = args else {
        bail!("usage: outbox-bench {SUBCOMMAND} lib|raw TABLE N");
    };
    let n: usize = n.parse().context("N")?;
    let url = std::env::var(URL_ENV).context(URL_ENV)?;
    let pool = connect_pg(&url, 4).await?;
    let counter = Counter::new(n);
    let mut out = std::io::stdout();
    let ready = |out: &mut std::io::Stdout| -> Res<()> {
        writeln!(out, "ready {}", peak_rss_kb("self")?).context("stdout")?;
        out.flush().context("stdout")
    };
    let elapsed = match mode.as_str() {
        "lib" => {
            let outbox = lib(
                Outbox::builder(pool.clone())
                    .table(table.as_str())
                    .build()
                    .await,
                "building the outbox",
            )?;
            let publishers = lib(
                Publishers::builder()
                    .publisher::<OrderPlaced, _>(Noop(counter.clone()))
                    .build(),
                "building publishers",
            )?;
            ready(&mut out)?;
            drain_library(&outbox, vec![publishers], 1, &counter, n).await?
        }
        "raw" => {
            let sql = RawSql::new(table);
            ready(&mut out)?;
            drain_raw(&pool, &sql, Design::Lease, vec![Sink::Noop], &counter).await?
        }
        other => bail!("unknown child mode {other:?}"),
    };
    writeln!(out, "done {}", elapsed.steady.as_nanos()).context("stdout")?;
    out.flush().context("stdout")?;
    // Until the parent closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await
    .context("waiting for the parent")?;
    pool.close().await;
    Ok(())
}

struct Size {
    n: usize,
    library: Vec<Drained>,
    raw: Vec<Drained>,
}

fn median_secs(runs: &[Drained]) -> f64 {
    crate::util::median(
        &runs
            .iter()
            .map(|r| r.elapsed.as_secs_f64())
            .collect::<Vec<_>>(),
    )
}

fn max_peak_mib(runs: &[Drained]) -> f64 {
    float(usize::try_from(runs.iter().map(|r| r.peak_kb).max().unwrap_or(0)).unwrap_or(usize::MAX))
        / 1024.0
}

fn min_baseline_mib(runs: &[Drained]) -> f64 {
    float(
        usize::try_from(runs.iter().map(|r| r.baseline_kb).min().unwrap_or(0))
            .unwrap_or(usize::MAX),
    ) / 1024.0
}

/// Both figures come from the same child runs; `show_memory` and
/// `show_scale` choose which are printed.
pub(crate) async fn memory_and_scale(b: &Bench, show_memory: bool, show_scale: bool) -> Res<()> {
    let table = b.table("mem").await?;
    let mut sizes = Vec::new();
    for &n in b.plan.scale_sizes {
        // Small drains are short and noisy: repeat them to steady the median.
        let reps = if n <= 10_000 {
            7
        } else if n <= 100_000 {
            3
        } else {
            1
        };
        let mut size = Size {
            n,
            library: Vec::new(),
            raw: Vec::new(),
        };
        for rep in 0..reps {
            for mode in order(2, rep) {
                b.refill(&table, n).await?;
                let (url, table) = (b.database_url.clone(), table.clone());
                let name = if mode == 0 { "lib" } else { "raw" };
                let drained = tokio::task::spawn_blocking(move || spawn(&url, name, &table, n))
                    .await
                    .context("the child runner")??;
                if mode == 0 {
                    &mut size.library
                } else {
                    &mut size.raw
                }
                .push(drained);
            }
        }
        sizes.push(size);
    }
    let (Some(first), Some(last)) = (sizes.first(), sizes.last()) else {
        return Ok(());
    };
    if show_memory {
        print_memory(&sizes, first, last);
    }
    if show_scale {
        print_scale(&sizes);
    }
    Ok(())
}

fn print_memory(sizes: &[Size], first: &Size, last: &Size) {
    println!(
        "\n== memory: peak RSS (VmHWM) of a relay process draining N entries, no-op publisher \
         (the child process is this binary; baseline = peak once connected, before draining)"
    );
    for size in sizes {
        println!(
            "  N = {:>9}   library {:>6.1} MiB (baseline {:>5.1})   raw loop {:>6.1} MiB (baseline {:>5.1})",
            count(size.n),
            max_peak_mib(&size.library),
            min_baseline_mib(&size.library),
            max_peak_mib(&size.raw),
            min_baseline_mib(&size.raw),
        );
    }
    // The largest size against the one ten times (or five times) smaller.
    let reference = sizes
        .iter()
        .rev()
        .nth(1)
        .filter(|s| s.n >= 50_000)
        .unwrap_or(first);
    let growth = max_peak_mib(&last.library) / max_peak_mib(&reference.library);
    let peak = max_peak_mib(&last.library);
    println!(
        "  memory ratio library peak {}/{} = {growth:.3}   (target flat, <= 1.10: {});   \
         library/raw at {} = {:.3}; library peak {peak:.1} MiB (target < 64 MiB: {})",
        count(last.n),
        count(reference.n),
        crate::util::at_most(growth, 1.10),
        count(last.n),
        peak / max_peak_mib(&last.raw),
        crate::util::at_most(peak, 64.0),
    );
}

fn print_scale(sizes: &[Size]) {
    println!(
        "\n== scale: drain time of N pending entries, one relay, no-op publisher (child process)"
    );
    let mut per_event = Vec::new();
    for size in sizes {
        let lib_secs = median_secs(&size.library);
        let raw_secs = median_secs(&size.raw);
        let lib_us = lib_secs * 1e6 / float(size.n);
        let raw_us = raw_secs * 1e6 / float(size.n);
        per_event.push((lib_us, raw_us));
        println!(
            "  N = {:>9}   library {lib_secs:>8.3} s ({lib_us:>6.2} us/event, {:>7} events/s)   \
             raw loop {raw_secs:>8.3} s ({raw_us:>6.2} us/event, {:>7} events/s)   library/raw {:.3}",
            count(size.n),
            thousands(float(size.n) / lib_secs),
            thousands(float(size.n) / raw_secs),
            raw_secs / lib_secs,
        );
    }
    let spread = |pick: fn(&(f64, f64)) -> f64| {
        let values: Vec<f64> = per_event.iter().map(pick).collect();
        let max = values.iter().copied().fold(f64::MIN, f64::max);
        let min = values.iter().copied().fold(f64::MAX, f64::min);
        max / min
    };
    let lib_spread = spread(|p| p.0);
    println!(
        "  scale ratio library per-event cost max/min across sizes = {lib_spread:.3}   (target <= 1.20: {});   \
         raw loop max/min = {:.3}",
        crate::util::at_most(lib_spread, 1.20),
        spread(|p| p.1),
    );
}
