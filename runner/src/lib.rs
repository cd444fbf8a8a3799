//! Container runner (skeleton; see issue 4).
