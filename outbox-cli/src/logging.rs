//! Logs on stderr, and panics as one line instead of a backtrace.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Set while the relay's progress line is on the terminal: a log line first
/// clears it, and the next tick draws it again.
pub(crate) static PROGRESS_SHOWN: AtomicBool = AtomicBool::new(false);

/// Logs go to stderr. `RUST_LOG` decides what is shown; by default the relay
/// logs at `info` and the other commands only warnings (their results are
/// their output). Colours only on a terminal.
pub(crate) fn init(relay: bool) {
    // lapin logs every closed channel as an error; the relay reports the
    // outcome itself (a rejection or an outage, with the broker's reason).
    let default = if relay {
        "info,sqlx=warn,lapin=off"
    } else {
        "warn,sqlx=error,lapin=off"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let terminal = std::io::stderr().is_terminal();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Stderr)
        .with_ansi(terminal)
        .with_target(!terminal)
        .try_init();
}

/// Stderr, clearing the progress line before a log line.
struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = std::io::Stderr;

    fn make_writer(&'a self) -> Self::Writer {
        let stderr = std::io::stderr();
        if PROGRESS_SHOWN.swap(false, Ordering::Relaxed) {
            let _ = stderr.lock().write_all(b"\r\x1b[2K");
        }
        stderr
    }
}

/// A panic (a bug) is reported as one `error:` line, never a backtrace.
pub(crate) fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = crate::error::one_line(&payload);
        eprintln!("error: internal error (a bug in outbox){place}: {message}");
    }));
}
