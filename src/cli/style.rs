//! Colour for a terminal, nothing otherwise.

/// How text is decorated: ANSI colours on a terminal, plain text elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    colour: bool,
}

impl Style {
    /// No decoration (pipes, files, tests, NO_COLOR).
    pub const fn plain() -> Style {
        Style { colour: false }
    }

    /// ANSI colours.
    pub const fn coloured() -> Style {
        Style { colour: true }
    }

    /// Colours when `is_terminal` and `no_color` (the NO_COLOR environment variable) is unset or empty
    /// (<https://no-color.org>).
    pub fn detect(is_terminal: bool, no_color: Option<&str>) -> Style {
        Style { colour: is_terminal && no_color.is_none_or(str::is_empty) }
    }

    /// Colours for standard output, as [`Style::detect`] decides.
    pub fn for_stdout() -> Style {
        use std::io::IsTerminal as _;
        Style::detect(std::io::stdout().is_terminal(), std::env::var("NO_COLOR").ok().as_deref())
    }

    fn paint(self, code: &str, text: &str) -> String {
        if self.colour { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
    }

    pub fn bold(self, text: &str) -> String {
        self.paint("1", text)
    }

    /// Something that is as it should be (green).
    pub fn good(self, text: &str) -> String {
        self.paint("32", text)
    }

    /// Something to look at (yellow).
    pub fn warn(self, text: &str) -> String {
        self.paint("33", text)
    }

    /// Something wrong (red).
    pub fn bad(self, text: &str) -> String {
        self.paint("31", text)
    }

    /// Less important detail (dim).
    pub fn dim(self, text: &str) -> String {
        self.paint("2", text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert_eq!(Style::detect(true, None), Style::coloured());
        assert_eq!(Style::detect(true, Some("")), Style::coloured());
        assert_eq!(Style::detect(true, Some("1")), Style::plain());
        assert_eq!(Style::detect(false, None), Style::plain());
    }

    #[test]
    fn plain_text_has_no_escape_codes() {
        assert_eq!(Style::plain().bad("x"), "x");
        assert_eq!(Style::coloured().bad("x"), "\x1b[31mx\x1b[0m");
    }
}
