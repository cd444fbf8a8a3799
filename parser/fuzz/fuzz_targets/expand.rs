//! Word expansion in both modes, both escape characters. Must never panic.
#![no_main]

use kiln_parser::shell::Lexer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(word) = std::str::from_utf8(rest) else {
        return;
    };
    let env: Vec<(String, String)> = vec![
        ("PWD".into(), "/home".into()),
        ("EMPTY".into(), String::new()),
        ("SPACED".into(), " a  b ".into()),
        ("X".into(), "a.b.c/d*e?f".into()),
    ];
    let escape = if sel & 1 == 0 { '\\' } else { '`' };
    let lex = Lexer::new(escape)
        .raw_quotes(sel & 2 != 0)
        .raw_escapes(sel & 4 != 0)
        .skip_unset_env(sel & 8 != 0)
        .skip_process_quotes(sel & 16 != 0);
    let _ = lex.process_word(word, &env);
    let _ = lex.process_words(word, &env);
    let _ = lex.process_word_with_matches(word, &env);
});
