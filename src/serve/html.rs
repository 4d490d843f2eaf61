//! HTML building blocks of the viewer: escaping, the page frame, and number, time and size formats.

use std::fmt::Write as _;

/// Text made safe for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A path segment or query value made safe for a URL.
pub fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Which item of the top bar is current.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Runs,
    Leaderboard,
    None,
}

/// A whole page: the top bar, `body`, the stylesheet and the live script.
pub fn page(title: &str, nav: Nav, body: &str) -> String {
    let item = |n: Nav, href: &str, label: &str| {
        format!(
            "<a href=\"{href}\"{}>{label}</a>",
            if n == nav { " class=\"current\"" } else { "" }
        )
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{} · gptx</title><link rel=\"stylesheet\" href=\"/assets/style.css\">\
<script src=\"/assets/live.js\" defer></script></head>\n<body>\
<header class=\"top\"><a class=\"brand\" href=\"/\">gptx</a><nav>{}{}</nav></header>\n\
<main>\n{body}\n</main></body></html>\n",
        esc(title),
        item(Nav::Runs, "/", "Runs"),
        item(Nav::Leaderboard, "/leaderboard", "Leaderboard"),
    )
}

/// `status` as a coloured pill.
pub(crate) fn status_pill(status: &str) -> String {
    let class = match status {
        "done" | "scored" | "passed" | "ok" => "good",
        "failed" | "rejected" | "error" | "interrupted" => "bad",
        "running" => "live",
        _ => "neutral",
    };
    format!("<span class=\"pill {class}\">{}</span>", esc(status))
}

/// Seconds for people: `850 ms`, `12.3 s`, `4 m 05 s`, `2 h 10 m`.
pub fn secs(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "–".into();
    }
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{} m {:02} s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{} h {:02} m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

/// Milliseconds for people.
pub fn ms(ms: f64) -> String {
    secs(ms / 1000.0)
}

/// Bytes for people: `512 B`, `3.4 KiB`, `1.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A timestamp in UTC, to the second.
pub fn time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A JSON scalar for a table cell: numbers to 3 decimals, strings as they are.
pub fn value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => u.to_string(),
            (_, Some(i), _) => i.to_string(),
            (_, _, Some(f)) => format!("{f:.3}"),
            _ => n.to_string(),
        },
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        serde_json::Value::Null => "–".into(),
        other => other.to_string(),
    }
}

/// `key: value` pairs as a definition grid.
pub fn facts(items: &[(&str, String)]) -> String {
    let mut out = String::from("<dl class=\"facts\">");
    for (k, v) in items {
        let _ = write!(out, "<div><dt>{}</dt><dd>{v}</dd></div>", esc(k));
    }
    out.push_str("</dl>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
        assert_eq!(url("a b/ü"), "a%20b%2F%C3%BC");
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(secs(0.25), "250 ms");
        assert_eq!(secs(12.34), "12.3 s");
        assert_eq!(secs(245.0), "4 m 05 s");
        assert_eq!(secs(7800.0), "2 h 10 m");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
    }
}
