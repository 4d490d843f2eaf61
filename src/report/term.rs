//! Escaping text that came from the agent before it reaches a terminal: no escape sequence of its own gets through.
//!
//! An agent's commands, outputs and log lines end up in `gptx show`, the scorecard and the progress
//! line. Printed raw, an escape sequence in them could clear the screen, retitle the window, write a
//! hyperlink or move the cursor over the harness's own lines. [`terminal_safe`] shows every control
//! character as an escape (`\x1b`, `\r`, `\u{202e}`) except newlines and tabs, and optionally keeps the
//! plain colour sequences (`ESC [ digits ; m`) that gptx's own styling writes.

/// `text` with control characters escaped; `keep_sgr` keeps colour sequences (SGR) as they are.
pub(crate) fn terminal_safe(text: &str, keep_sgr: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\n' | '\t' => out.push(c),
            '\x1b' if keep_sgr => match sgr_len(&text[i..]) {
                Some(n) => {
                    out.push_str(&text[i..i + n]);
                    while chars.peek().is_some_and(|(j, _)| *j < i + n) {
                        chars.next();
                    }
                }
                None => out.push_str("\\x1b"),
            },
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            // C1 controls, and the bidirectional overrides that make text read other than it is.
            '\u{80}'..='\u{9f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// The length of a colour sequence `ESC [ [0-9;]* m` at the start of `s`.
fn sgr_len(s: &str) -> Option<usize> {
    let rest = s.strip_prefix("\x1b[")?;
    let n = rest
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b';')
        .count();
    (rest.as_bytes().get(n) == Some(&b'm')).then_some(2 + n + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_but_colours_when_asked() {
        let evil = "ok\x1b]0;pwned\x07\x1b[2J\rX\u{202e}txt.exe\x1b[31mred\x1b[0m\n\tend\u{9b}";
        assert_eq!(
            terminal_safe(evil, false),
            "ok\\x1b]0;pwned\\x07\\x1b[2J\\rX\\u{202e}txt.exe\\x1b[31mred\\x1b[0m\n\tend\\u{9b}"
        );
        assert_eq!(
            terminal_safe(evil, true),
            "ok\\x1b]0;pwned\\x07\\x1b[2J\\rX\\u{202e}txt.exe\x1b[31mred\x1b[0m\n\tend\\u{9b}"
        );
        assert_eq!(terminal_safe("plain ünïcödé", false), "plain ünïcödé");
    }
}
