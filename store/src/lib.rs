//! Content-addressed store (skeleton; see issue 3).
