//! How client commands print: aligned text for people by default, JSON for scripts
//! (`-o json`).

use serde_json::Value;

use super::error::CliError;

/// `-o text | json`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// Write to standard output. A reader that went away (`| head`) ends the output quietly
/// instead of failing (as `print!` would, with a panic).
pub fn print(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Io(format!(
            "cannot write to standard output: {e}"
        ))),
        _ => Ok(()),
    }
}

/// Print a JSON document, pretty, for scripts.
pub fn json(value: &Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::Io(format!("cannot write JSON: {e}")))?;
    print(&format!("{text}\n"))
}

/// A table with a header row; columns padded to their widest cell, the last left ragged.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            if i + 1 < widths.len() {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            } else {
                out.push_str(cell);
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(&mut header.iter().copied());
    out.push('\n');
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
        out.push('\n');
    }
    out
}

/// A JSON value as one cell or line of text: strings bare, lists comma-separated, nothing
/// as `-`.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Bool(true) => "yes".to_owned(),
        Value::Bool(false) => "no".to_owned(),
        Value::Array(items) if items.is_empty() => "-".to_owned(),
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            items.iter().map(text).collect::<Vec<_>>().join(", ")
        }
        Value::Object(o) if o.is_empty() => "-".to_owned(),
        other => other.to_string(),
    }
}

/// One record as `key: value` lines, the given keys first, then any others the API sent.
pub fn record(value: &Value, first: &[&str]) -> String {
    let Some(obj) = value.as_object() else {
        return format!("{}\n", text(value));
    };
    let mut keys: Vec<&str> = first
        .iter()
        .copied()
        .filter(|k| obj.contains_key(*k))
        .collect();
    keys.extend(
        obj.keys()
            .map(String::as_str)
            .filter(|k| !first.contains(k)),
    );
    let width = keys.iter().map(|k| k.chars().count()).max().unwrap_or(0) + 1;
    keys.iter()
        .map(|k| {
            format!(
                "{:<width$} {}\n",
                format!("{k}:"),
                text(&obj[*k]),
                width = width
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["ID", "NAME"],
            &[
                vec!["wh_1".into(), "crm".into()],
                vec!["wh_22".into(), "slack".into()],
            ],
        );
        assert_eq!(t, "ID     NAME\nwh_1   crm\nwh_22  slack\n");
    }

    #[test]
    fn records_list_chosen_keys_first() {
        let r = record(
            &json!({"url": "https://x", "id": "wh_1", "events": ["*", "bill.paid"], "enabled": true}),
            &["id", "url"],
        );
        assert_eq!(
            r,
            "id:      wh_1\nurl:     https://x\nenabled: yes\nevents:  *, bill.paid\n"
        );
    }
}
