//! Dockerfile parser (skeleton; see issue 2).
