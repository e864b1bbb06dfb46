//! A table of the report, rendered both as Markdown and as styled HTML: cells carry a class (how
//! the HTML colours them) and, for scores, the interval drawn as a bar.

use std::fmt::Write as _;

/// HTML-escape text for element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escaped text with its `code` spans (as the route's reasons write target names) in `<code>`.
pub fn prose(s: &str) -> String {
    if s.matches('`').count() % 2 == 1 {
        return esc(s);
    }
    s.split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("<code>{}</code>", esc(part))
            } else {
                esc(part)
            }
        })
        .collect()
}

/// A share as percent with one decimal.
pub fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

pub fn money(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.4}"))
}

/// A score's 95% interval as an HTML bar (CSS draws it from the custom properties).
pub fn ci_bar(mean: f64, lo: f64, hi: f64) -> String {
    let c = |x: f64| 100.0 * x.clamp(0.0, 1.0);
    format!(
        "<span class=\"ci\" style=\"--lo:{:.1}%;--hi:{:.1}%;--m:{:.1}%\"></span>",
        c(lo),
        c(hi),
        c(mean)
    )
}

#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub text: String,
    /// A CSS class of the cell (`num`, `yes`, `no`, …).
    pub class: Option<&'static str>,
    /// A score's (mean, low, high), drawn under the text in HTML.
    pub interval: Option<(f64, f64, f64)>,
}

impl Cell {
    pub fn num(text: impl Into<String>) -> Self {
        Cell {
            text: text.into(),
            class: Some("num"),
            interval: None,
        }
    }

    pub fn class(mut self, class: &'static str) -> Self {
        self.class = Some(class);
        self
    }

    /// A score in percent with its interval, as text and as a bar.
    pub fn score(mean: f64, lo: f64, hi: f64) -> Self {
        Cell {
            text: format!("{} ({}–{})", pct(mean), pct(lo), pct(hi)),
            class: Some("num"),
            interval: Some((mean, lo, hi)),
        }
    }

    /// `yes` (styled as good) or `no`.
    pub fn yes_no(v: bool) -> Self {
        Cell {
            text: if v { "yes" } else { "no" }.into(),
            class: Some(if v { "yes" } else { "no" }),
            interval: None,
        }
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Cell {
            text,
            ..Default::default()
        }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Cell::from(text.to_string())
    }
}

#[derive(Debug, Clone, Default)]
pub struct Table {
    pub caption: String,
    /// A sentence under the caption.
    pub note: Option<String>,
    pub header: Vec<String>,
    /// Each row with an optional CSS class (`primary`, `excluded`).
    pub rows: Vec<(Option<&'static str>, Vec<Cell>)>,
}

impl Table {
    pub fn new(caption: impl Into<String>, header: &[&str]) -> Self {
        Table {
            caption: caption.into(),
            header: header.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        }
    }

    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push((None, cells));
    }

    /// Markdown, under a heading of `level` (`##`).
    pub fn markdown(&self, level: &str) -> String {
        let mut s = format!("{level} {}\n\n", self.caption);
        if let Some(n) = &self.note {
            let _ = writeln!(s, "{n}\n");
        }
        let cell = |t: &str| t.replace('|', "\\|").replace('\n', " ");
        let _ = writeln!(
            s,
            "| {} |\n|{}|",
            self.header.join(" | "),
            vec!["---"; self.header.len()].join("|")
        );
        for (_, r) in &self.rows {
            let cells: Vec<String> = r.iter().map(|c| cell(&c.text)).collect();
            let _ = writeln!(s, "| {} |", cells.join(" | "));
        }
        s
    }

    /// A styled HTML table, under a heading of `tag` (`h2`, `h3`), with `class` on the table.
    pub fn html(&self, tag: &str, class: &str) -> String {
        let mut s = format!("<{tag}>{}</{tag}>", esc(&self.caption));
        if let Some(n) = &self.note {
            let _ = write!(s, "<p class=\"note\">{}</p>", prose(n));
        }
        let _ = write!(s, "<table class=\"{}\"><thead><tr>", esc(class));
        for h in &self.header {
            let _ = write!(s, "<th>{}</th>", esc(h));
        }
        s.push_str("</tr></thead><tbody>");
        for (rc, r) in &self.rows {
            match rc {
                Some(c) => {
                    let _ = write!(s, "<tr class=\"{c}\">");
                }
                None => s.push_str("<tr>"),
            }
            for c in r {
                match c.class {
                    Some(k) => {
                        let _ = write!(s, "<td class=\"{k}\">");
                    }
                    None => s.push_str("<td>"),
                }
                s.push_str(&prose(&c.text));
                if let Some((m, lo, hi)) = c.interval {
                    s.push_str(&ci_bar(m, lo, hi));
                }
                s.push_str("</td>");
            }
            s.push_str("</tr>");
        }
        s.push_str("</tbody></table>");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_escaped_in_html_and_pipes_in_markdown() {
        let mut t = Table::new("a <b>", &["x", "y"]);
        t.row(vec!["<script>\"'&".into(), "p|q".into()]);
        let html = t.html("h2", "styled");
        assert!(html.contains("&lt;script&gt;&quot;&#39;&amp;"), "{html}");
        assert!(!html.contains("<script>") && !html.contains("<b>"));
        assert!(t.markdown("##").contains("| p\\|q |"));
        assert_eq!(prose("`a<b` wins"), "<code>a&lt;b</code> wins");
        assert_eq!(prose("odd ` tick"), "odd ` tick");
    }
}
