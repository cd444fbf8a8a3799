//! The layer applier: every input is applied (overlay whiteouts) into a
//! fresh directory and checked by the validator `kiln load` uses. A layer
//! the applier takes must pass the validator with the same diffID (the
//! validator never refuses a layer that unpacks).
#![no_main]

use kiln_store::layer::{apply_layer, validate_layer};
use kiln_store::{Limits, WhiteoutMode};
use libfuzzer_sys::fuzz_target;

fn limits() -> Limits {
    Limits {
        max_uncompressed_bytes: 16 << 20,
        max_entries: 10_000,
        max_header_bytes: 64 << 10,
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::Builder::new()
        .prefix("kiln-fuzz-layer")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("temp dir");
    let applied = apply_layer(&mut &data[..], dir.path(), WhiteoutMode::Overlay, &limits());
    let checked = validate_layer(&mut &data[..], &limits());
    if let Ok(d) = applied {
        match checked {
            Ok(v) => assert_eq!(d, v, "applier and validator disagree on the diffID"),
            Err(e) => panic!("the validator refuses a layer the applier takes: {e}"),
        }
    }
});
