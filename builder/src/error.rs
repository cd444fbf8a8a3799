//! The binary's error with an exit code: `docker`'s habits (1 for a failed
//! command, 125 when `run` itself fails, 126/127 when the command cannot be
//! executed) are kept where users script against them.

use std::fmt;

#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    /// What the user is shown, complete: the causes are in it already.
    pub message: String,
    /// The typed error the message was made from, for callers of the
    /// library that look into the cause chain.
    pub cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            cause: None,
        }
    }

    /// A failure shown as `message` whose cause chain starts at `cause`.
    pub fn caused_by(
        code: u8,
        message: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Failure {
        Failure {
            cause: Some(Box::new(cause)),
            ..Failure::new(code, message)
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Failure {
        let mut f = match err.downcast::<Failure>() {
            Ok(f) => f,
            Err(err) => Failure::new(1, format!("kiln: error: {err:#}")),
        };
        if f.message.contains(LAYER_LIMIT) && !f.message.contains(LAYER_LIMIT_HINT) {
            f.message = format!("{}\n{LAYER_LIMIT_HINT}", f.message.trim_end());
        }
        f
    }
}

/// The store's words for a layer past its bounds (kiln_store::LayerError::
/// LimitExceeded), and how to raise them.
const LAYER_LIMIT: &str = "layer exceeds the limit of";
const LAYER_LIMIT_HINT: &str = "hint: if the layer is legitimate, raise the bound with \
     --max-layer-size SIZE (KILN_MAX_LAYER_SIZE) or --max-layer-entries N (KILN_MAX_LAYER_ENTRIES)";

/// The text of a Dockerfile or `.dockerignore` (`name` in messages): not
/// UTF-8 is a failure showing the line, the column and the byte.
pub fn utf8_text(bytes: Vec<u8>, name: &str) -> Result<String, Failure> {
    match String::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(e) => {
            let bytes = e.into_bytes();
            let err = match kiln_parser::decode(&bytes) {
                Err(err) => err,
                Ok(_) => unreachable!("from_utf8 and decode disagree"),
            };
            let shown = String::from_utf8_lossy(&bytes);
            Err(Failure::new(1, err.render(&shown, name).trim_end()))
        }
    }
}
