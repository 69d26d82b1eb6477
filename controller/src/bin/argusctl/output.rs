//! How argusctl prints a listing: `-o table` (the default columns, aligned), `-o wide` (every
//! column), `-o json` (one array of objects with every field, timestamps in Unix ms), with
//! colour only on a terminal and never when `NO_COLOR` is set.

use std::io::{IsTerminal, Write};

use serde_json::Value;

/// The `-o` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, the usual ones.
    #[default]
    Table,
    /// Aligned columns, all of them.
    Wide,
    /// A JSON array of objects with every field.
    Json,
}

/// How a column's value is shown in a table (JSON always carries the raw value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// As it is.
    Text,
    /// Right-aligned.
    Number,
    /// Unix milliseconds as a UTC time.
    Time,
    /// A state or health word, coloured by what it means.
    State,
}

/// One column of a listing: its JSON key, its table header, and whether only `-o wide` has it.
#[derive(Debug, Clone, Copy)]
pub struct Col {
    pub key: &'static str,
    pub header: &'static str,
    pub wide: bool,
    pub show: Show,
}

impl Col {
    /// A column of the usual table.
    pub const fn new(key: &'static str, header: &'static str, show: Show) -> Self {
        Self {
            key,
            header,
            wide: false,
            show,
        }
    }

    /// A column only `-o wide` shows.
    pub const fn wide(key: &'static str, header: &'static str, show: Show) -> Self {
        Self {
            key,
            header,
            wide: true,
            show,
        }
    }
}

/// Colour on stdout: only a terminal, and never with `NO_COLOR` set to anything non-empty
/// (<https://no-color.org>).
pub fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The listing as text: a table (`Table`, `Wide`) or a JSON array (`Json`).
pub fn render(format: Format, cols: &[Col], rows: &[Value], colour: bool) -> String {
    if format == Format::Json {
        return serde_json::to_string_pretty(rows).unwrap_or_else(|_| "[]".to_owned()) + "\n";
    }
    let cols: Vec<&Col> = cols
        .iter()
        .filter(|c| format == Format::Wide || !c.wide)
        .collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|c| cell(c.show, &r[c.key])).collect())
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.header.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |out: &mut String, values: &[String], paint: bool| {
        let last = values.len().saturating_sub(1);
        for (i, (v, c)) in values.iter().zip(&cols).enumerate() {
            let pad = widths[i].saturating_sub(v.chars().count());
            let painted = if paint && c.show == Show::State {
                paint_state(v)
            } else {
                v.clone()
            };
            if c.show == Show::Number {
                out.push_str(&" ".repeat(pad));
                out.push_str(&painted);
            } else {
                out.push_str(&painted);
                if i != last {
                    out.push_str(&" ".repeat(pad));
                }
            }
            if i != last {
                out.push_str("  ");
            }
        }
        out.push('\n');
    };
    let headers: Vec<String> = cols.iter().map(|c| c.header.to_owned()).collect();
    line(&mut out, &headers, false);
    for r in &cells {
        line(&mut out, r, colour);
    }
    out
}

/// Prints a listing to stdout.
pub fn print(format: Format, cols: &[Col], rows: &[Value]) -> anyhow::Result<()> {
    let text = render(format, cols, rows, format != Format::Json && colour());
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

fn cell(show: Show, v: &Value) -> String {
    match (show, v) {
        (_, Value::Null) => "-".to_owned(),
        (Show::Time, Value::Number(n)) => match n.as_i64() {
            Some(0) | None => "-".to_owned(),
            Some(ms) => chrono::DateTime::from_timestamp_millis(ms)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_else(|| "-".into()),
        },
        (_, Value::String(s)) if s.is_empty() => "-".to_owned(),
        (_, Value::String(s)) => s.clone(),
        (_, Value::Object(m)) => {
            let mut kv: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            kv.sort();
            if kv.is_empty() {
                "-".to_owned()
            } else {
                kv.join(",")
            }
        }
        (_, v) => v.to_string(),
    }
}

/// Green for what is well, yellow for what waits or stalls, red for what failed or died.
fn paint_state(word: &str) -> String {
    let code = match word {
        "working" | "up" | "ok" | "delivered" | "completed" | "closed" => "32",
        "idle" | "stalled" | "suspect" | "cooldown" | "needs_human" | "pending" | "acked"
        | "booting" | "waiting" => "33",
        "dead" | "zombie" | "down" | "failed" | "open" | "crash_loop" => "31",
        _ => return word.to_owned(),
    };
    format!("\x1b[{code}m{word}\x1b[0m")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const COLS: [Col; 3] = [
        Col::new("name", "NAME", Show::Text),
        Col::new("state", "STATE", Show::State),
        Col::wide("pid", "PID", Show::Number),
    ];

    #[test]
    fn tables_align_and_wide_adds_columns() {
        let rows = [
            json!({"name": "a", "state": "working", "pid": 12}),
            json!({"name": "longer", "state": "dead", "pid": 3456}),
        ];
        let t = render(Format::Table, &COLS, &rows, false);
        assert_eq!(t, "NAME    STATE\na       working\nlonger  dead\n");
        let w = render(Format::Wide, &COLS, &rows, false);
        assert_eq!(
            w,
            "NAME    STATE     PID\na       working    12\nlonger  dead     3456\n"
        );
        let c = render(Format::Table, &COLS, &rows, true);
        assert!(c.contains("\x1b[32mworking\x1b[0m"), "{c:?}");
        assert!(!c.lines().next().unwrap_or_default().contains('\x1b'));
    }

    #[test]
    fn json_carries_every_field() {
        let rows = [json!({"name": "a", "state": "idle", "pid": 1, "extra": true})];
        let j: Value =
            serde_json::from_str(&render(Format::Json, &COLS, &rows, true)).expect("valid json");
        assert_eq!(j[0]["extra"], json!(true));
        assert_eq!(j[0]["pid"], json!(1));
    }
}
