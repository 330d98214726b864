//! etcdctl-style output: `-w simple|table|json`.

/// How a command prints its outcome (`-w`); the CLI parses it in `cli.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Simple,
    Table,
    Json,
}

/// Renders rows the way etcdctl's tables look: `+---+` borders, centered upper-case headers,
/// numbers right-aligned and text left-aligned.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    render(headers, rows, |cell| {
        !cell.is_empty() && cell.parse::<f64>().is_ok()
    })
}

/// As [`table`], with every cell right-aligned (`etcdutl snapshot status -w table`).
pub fn table_right_aligned(headers: &[&str], rows: &[Vec<String>]) -> String {
    render(headers, rows, |_| true)
}

/// The table; `right(cell)` says whether a cell is right-aligned. Headers are centered with
/// the odd space on the right, as tablewriter does.
fn render(headers: &[&str], rows: &[Vec<String>], right: impl Fn(&str) -> bool) -> String {
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
                .max(h.chars().count())
        })
        .collect();
    let rule: String = {
        let mut s = String::from("+");
        for w in &widths {
            s.push_str(&"-".repeat(w + 2));
            s.push('+');
        }
        s.push('\n');
        s
    };
    let mut out = rule.clone();
    out.push('|');
    for (h, w) in headers.iter().zip(&widths) {
        let h = h.to_uppercase();
        let pad = w - h.chars().count();
        let left = pad / 2;
        out.push_str(&format!(
            " {}{}{} |",
            " ".repeat(left),
            h,
            " ".repeat(pad - left)
        ));
    }
    out.push('\n');
    out.push_str(&rule);
    for row in rows {
        out.push('|');
        for (i, w) in widths.iter().enumerate() {
            let cell = row.get(i).map(String::as_str).unwrap_or("");
            if right(cell) {
                out.push_str(&format!(" {cell:>w$} |"));
            } else {
                out.push_str(&format!(" {cell:<w$} |"));
            }
        }
        out.push('\n');
    }
    out.push_str(&rule);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_etcdctl() {
        let text = table(
            &["id", "revision"],
            &[vec!["a".to_string(), "12".to_string()]],
        );
        assert_eq!(
            text,
            "+----+----------+\n| ID | REVISION |\n+----+----------+\n| a  |       12 |\n+----+----------+\n"
        );
    }
}
