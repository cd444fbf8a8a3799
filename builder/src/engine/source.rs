//! The Dockerfile as its steps see it: its name and text, for errors that
//! show where they happened (BuildKit's excerpt), and its escape
//! character, for word expansion.

use anyhow::Result;
use kiln_parser::shell::Lexer;

use super::state::StageState;
use crate::error::Failure;

pub struct Source {
    /// As the user named it (`Dockerfile`, `-`).
    pub name: String,
    pub text: String,
    /// The `# escape=` directive's character (`\\` by default).
    pub escape: char,
}

impl Source {
    pub fn new(name: &str, text: &str, escape: char) -> Source {
        Source {
            name: name.to_string(),
            text: text.to_string(),
            escape,
        }
    }

    pub fn lexer(&self) -> Lexer {
        Lexer::new(self.escape)
    }

    /// `word` expanded in the stage's scope; an error is located at `line`.
    pub fn expand(&self, st: &StageState, word: &str, line: usize) -> Result<String> {
        self.lexer()
            .process_word(word, &st.scope_env())
            .map_err(|e| self.located(line, &e.to_string()))
    }

    /// `Dockerfile:N`, the place of a step in records and messages.
    pub fn at(&self, line: usize) -> String {
        format!("{}:{}", self.name, line)
    }

    /// An error that shows where in the Dockerfile it happened, BuildKit's way.
    pub fn located(&self, line: usize, msg: &str) -> anyhow::Error {
        anyhow::Error::new(Failure::new(1, self.located_text(line, msg)))
    }

    /// [`Source::located`] for an error whose cause chain is kept (the
    /// message shows it on one line; the chain stays inspectable).
    pub fn located_cause(&self, line: usize, err: anyhow::Error) -> anyhow::Error {
        let text = self.located_text(line, &format!("{err:#}"));
        let cause: Box<dyn std::error::Error + Send + Sync> = err.into();
        anyhow::Error::new(Failure {
            cause: Some(cause),
            ..Failure::new(1, text)
        })
    }

    fn located_text(&self, line: usize, msg: &str) -> String {
        let src = &self.text;
        let lines: Vec<&str> = src.lines().collect();
        let mut out = String::new();
        out.push_str(&format!("{}:{}\n", self.name, line));
        out.push_str("--------------------\n");
        let lo = line.saturating_sub(2).max(1);
        let hi = (line + 2).min(lines.len());
        for n in lo..=hi {
            let marker = if n == line { ">>>" } else { "   " };
            out.push_str(&format!(
                "{marker} {n:>3} | {}\n",
                lines.get(n - 1).copied().unwrap_or("")
            ));
        }
        out.push_str("--------------------\n");
        out.push_str(&format!("ERROR: {msg}"));
        out
    }
}
