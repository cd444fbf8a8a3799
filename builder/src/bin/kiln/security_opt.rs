//! `--security-opt`, shared by `kiln build` and `kiln run`.

/// Whether `opts` ask for no syscall filter; any option kiln does not
/// know is an error naming it.
pub fn seccomp_unconfined(opts: &[String]) -> Result<bool, String> {
    let mut unconfined = false;
    for o in opts {
        match o.as_str() {
            "seccomp=unconfined" | "seccomp:unconfined" => unconfined = true,
            other => {
                return Err(format!(
                    "kiln: --security-opt {other}: not supported (kiln knows seccomp=unconfined)"
                ))
            }
        }
    }
    Ok(unconfined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unconfined_in_either_spelling_and_nothing_else() {
        assert_eq!(seccomp_unconfined(&[]), Ok(false));
        assert_eq!(seccomp_unconfined(&["seccomp=unconfined".into()]), Ok(true));
        assert_eq!(seccomp_unconfined(&["seccomp:unconfined".into()]), Ok(true));
        let e = seccomp_unconfined(&["apparmor=unconfined".into()]).unwrap_err();
        assert!(
            e.contains("apparmor=unconfined") && e.contains("seccomp=unconfined"),
            "{e}"
        );
    }
}
