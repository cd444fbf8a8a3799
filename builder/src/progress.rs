//! Build progress. `plain` writes one line per event (for CI logs, in
//! BuildKit's `#N` style); `tty` draws live spinners with indicatif; quiet
//! writes nothing. Steps of parallel stages interleave safely.

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
                    let _ = m.println(text);
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
                        ProgressStyle::with_template("{spinner} {prefix} {msg} {elapsed}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    b.set_prefix(label.to_string());
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
            eprintln!("WARNING: {text}");
        } else {
            self.line(&format!("WARNING: {text}"));
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}
