//! Any text: parse, dump, typed layer, render errors. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    match kiln_parser::parse(src) {
        Ok(df) => {
            let _ = df.to_sexpr();
            let _ = df.to_json();
            if let Err(e) = kiln_parser::parse_stages(&df) {
                let _ = e.render(src, "Dockerfile");
            }
        }
        Err(e) => {
            let _ = e.render(src, "Dockerfile");
        }
    }
});
