//! Build progress. `plain` writes one line per event (for CI logs, in
//! BuildKit's `#N` style); `tty` draws live spinners with indicatif; quiet
//! writes nothing. Steps of parallel stages interleave safely. On a tty,
//! every line is cut to the terminal's width rather than wrapped (a wrapped
//! line breaks the redrawing of the live ones).

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Tty,
    Quiet,
}

pub struct Progress {
    mode: Mode,
    start: Instant,
    next: AtomicUsize,
    out: Mutex<()>,
    multi: Option<MultiProgress>,
    bars: Mutex<Vec<(usize, ProgressBar)>>,
}

#[derive(Debug, Clone, Copy)]
pub struct StepId(usize);

impl Progress {
    pub fn new(mode: Mode) -> Progress {
        let multi = (mode == Mode::Tty)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)));
        Progress {
            mode,
            start: Instant::now(),
            next: AtomicUsize::new(1),
            out: Mutex::new(()),
            multi,
            bars: Mutex::new(Vec::new()),
        }
    }

    fn line(&self, text: &str) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Plain => {
                let _g = self.out.lock();
                let mut e = std::io::stderr().lock();
                let _ = writeln!(e, "{text}");
            }
            Mode::Tty => {
                if let Some(m) = &self.multi {
                    let _ = m.println(fit(text, term_width()));
                }
            }
        }
    }

    fn bar(&self, id: StepId) -> Option<ProgressBar> {
        self.bars
            .lock()
            .ok()?
            .iter()
            .find(|(i, _)| *i == id.0)
            .map(|(_, b)| b.clone())
    }

    /// A step begins: `#3 [web 2/5] RUN pip install flask`.
    pub fn start(&self, label: &str) -> StepId {
        let id = StepId(self.next.fetch_add(1, Ordering::SeqCst));
        match self.mode {
            Mode::Plain => self.line(&format!("#{} {label}", id.0)),
            Mode::Tty => {
                if let Some(m) = &self.multi {
                    let b = m.add(ProgressBar::new_spinner());
                    b.set_style(
                        // wide_msg: the output line takes what is left of
                        // the width, cut, never wrapped.
                        ProgressStyle::with_template("{spinner} {prefix} {wide_msg} {elapsed}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    // Room for the spinner, the elapsed time and some output.
                    let room = term_width().saturating_sub(16).max(20);
                    b.set_prefix(fit(label, room).into_owned());
                    b.enable_steady_tick(Duration::from_millis(100));
                    if let Ok(mut bars) = self.bars.lock() {
                        bars.push((id.0, b));
                    }
                }
            }
            Mode::Quiet => {}
        }
        id
    }

    pub fn log(&self, id: StepId, text: &str) {
        match self.mode {
            Mode::Plain => {
                let t = self.start.elapsed().as_secs_f64();
                self.line(&format!("#{} {t:.3} {text}", id.0));
            }
            Mode::Tty => {
                if let Some(b) = self.bar(id) {
                    let mut s: String = text.chars().take(80).collect();
                    s.retain(|c| c != '\r');
                    b.set_message(s);
                }
            }
            Mode::Quiet => {}
        }
    }

    fn finish(&self, id: StepId, word: String) {
        match self.mode {
            Mode::Plain => self.line(&format!("#{} {word}", id.0)),
            Mode::Tty => {
                if let Some(b) = self.bar(id) {
                    let prefix = b.prefix();
                    b.finish_and_clear();
                    if let Some(m) = &self.multi {
                        m.remove(&b);
                    }
                    self.line(&format!(" => {prefix}  {word}"));
                }
            }
            Mode::Quiet => {}
        }
    }

    pub fn cached(&self, id: StepId) {
        self.finish(id, "CACHED".into());
    }

    /// A hit, and with `--explain` the imported cache it came from
    /// (`CACHED (from type=registry,ref=...)`).
    pub fn cached_from(&self, id: StepId, origin: Option<&str>) {
        match origin {
            Some(o) => self.finish(id, format!("CACHED (from {o})")),
            None => self.cached(id),
        }
    }

    pub fn done(&self, id: StepId, took: Duration) {
        self.finish(id, format!("DONE {:.2}s", took.as_secs_f64()));
    }

    pub fn error(&self, id: StepId, msg: &str) {
        self.finish(id, format!("ERROR: {msg}"));
    }

    pub fn info(&self, text: &str) {
        self.line(text);
    }

    /// Warnings are shown whatever the mode, on stderr.
    pub fn warn(&self, text: &str) {
        if self.mode == Mode::Quiet {
            // A closed stderr (`2>&1 | head`) must not fail the build.
            let _ = writeln!(std::io::stderr().lock(), "WARNING: {text}");
        } else {
            self.line(&format!("WARNING: {text}"));
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

/// The terminal's width in columns (80 when stderr is not a terminal).
fn term_width() -> usize {
    console::Term::stderr()
        .size_checked()
        .map_or(80, |(_, cols)| usize::from(cols).max(1))
}

/// `text` cut to `width` columns (by display width, so wide characters
/// count double), its end marked with `…`.
fn fit(text: &str, width: usize) -> std::borrow::Cow<'_, str> {
    console::truncate_str(text, width, "…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_to_the_width_not_wrapped() {
        assert_eq!(fit("#4 [1/4] COPY f /f", 80), "#4 [1/4] COPY f /f");
        let long = format!("#5 [2/4] RUN {}", "x".repeat(200));
        let cut = fit(&long, 40);
        assert_eq!(console::measure_text_width(&cut), 40);
        assert!(cut.starts_with("#5 [2/4] RUN xxx") && cut.ends_with('…'));
        // Wide characters are two columns each; a cut never splits one.
        let wide = fit("RUN echo 日本語日本語日本語", 15);
        assert!(console::measure_text_width(&wide) <= 15, "{wide}");
    }
}
