//! Writing to stdout (a closed pipe ends the command quietly), aligned
//! tables, JSON, and the confirmation prompt.

use std::io::{BufRead, IsTerminal, Write};

use crate::error::Failure;

/// Writes `text` and a newline to stdout.
pub(crate) fn line(text: impl AsRef<str>) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_ref().as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Writes a JSON value: pretty for one-shot commands, one line for streams.
pub(crate) fn json(value: &serde_json::Value, pretty: bool) -> Result<(), Failure> {
    let text = if pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    }
    .map_err(Failure::new)?;
    line(text)
}

/// Columns aligned under their headers; the columns whose index is in
/// `right` are right-aligned (numbers).
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let render = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let pad = width.saturating_sub(cell.chars().count());
            if right.contains(&i) {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.push_str(&" ".repeat(pad));
            }
        }
        text.trim_end().to_owned()
    };
    let mut lines = vec![render(&mut headers.iter().copied())];
    for row in rows {
        lines.push(render(&mut row.iter().map(String::as_str)));
    }
    lines.join("\n")
}

/// One line, at most `max` characters (an ellipsis marks the cut).
pub(crate) fn clip(text: &str, max: usize) -> String {
    let flat = crate::error::one_line(text);
    if flat.chars().count() <= max {
        flat
    } else {
        let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// Asks `Proceed? [y/N]` on the terminal unless `yes`; without a terminal
/// and without `yes`, refuses. `action` says what would be done, e.g.
/// `requeue 3 dead letters of "outbox"`.
pub(crate) fn confirm(action: &str, yes: bool) -> Result<(), Failure> {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Failure::new(format!(
            "refusing to {action} without confirmation: stdin is not a terminal (pass --yes)"
        )));
    }
    let mut err = std::io::stderr().lock();
    write!(err, "This will {action}. Proceed? [y/N] ")?;
    err.flush()?;
    drop(err);
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(Failure::new("aborted: nothing was changed")),
    }
}

/// `1 dead letter`, `3 dead letters`.
pub(crate) fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let text = table(
            &["NAME", "N"],
            &[
                vec!["a.b".into(), "3".into()],
                vec!["long.name".into(), "12".into()],
            ],
            &[1],
        );
        assert_eq!(text, "NAME        N\na.b         3\nlong.name  12");
    }

    #[test]
    fn clips_to_one_short_line() {
        assert_eq!(clip("a\nb", 10), "a; b");
        assert_eq!(clip("abcdefghij", 5), "abcd…");
    }
}
