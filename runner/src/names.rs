//! Docker-style random container names: `adjective_noun`.

const ADJECTIVES: &[&str] = &[
    "admiring", "affectionate", "agitated", "amazing", "angry", "awesome", "beautiful",
    "blissful", "bold", "boring", "brave", "busy", "charming", "clever", "compassionate",
    "competent", "condescending", "confident", "cool", "cranky", "crazy", "dazzling",
    "determined", "distracted", "dreamy", "eager", "ecstatic", "elastic", "elated", "elegant",
    "eloquent", "epic", "exciting", "fervent", "festive", "flamboyant", "focused", "friendly",
    "frosty", "funny", "gallant", "gifted", "goofy", "gracious", "great", "happy", "hardcore",
    "heuristic", "hopeful", "hungry", "infallible", "inspiring", "intelligent", "interesting",
    "jolly", "jovial", "keen", "kind", "laughing", "loving", "lucid", "magical", "modest",
    "musing", "mystifying", "naughty", "nervous", "nice", "nifty", "nostalgic", "objective",
    "optimistic", "peaceful", "pedantic", "pensive", "practical", "priceless", "quirky",
    "quizzical", "recursing", "relaxed", "reverent", "romantic", "sad", "serene", "sharp",
    "silly", "sleepy", "stoic", "strange", "stupefied", "suspicious", "sweet", "tender",
    "thirsty", "trusting", "unruffled", "upbeat", "vibrant", "vigilant", "vigorous",
    "wizardly", "wonderful", "xenodochial", "youthful", "zealous", "zen",
];

const NOUNS: &[&str] = &[
    "agnesi", "albattani", "allen", "almeida", "archimedes", "ardinghelli", "aryabhata",
    "austin", "babbage", "banach", "bardeen", "bartik", "bassi", "bell", "bhabha", "blackwell",
    "bohr", "booth", "borg", "bose", "boyd", "brahmagupta", "brattain", "brown", "carson",
    "cerf", "chandrasekhar", "clarke", "colden", "cori", "cray", "curie", "darwin", "davinci",
    "dijkstra", "dirac", "driscoll", "dubinsky", "easley", "edison", "einstein", "elion",
    "engelbart", "euclid", "euler", "fermat", "fermi", "feynman", "franklin", "galileo",
    "gates", "goldberg", "goldstine", "golick", "goodall", "hamilton", "hawking", "heisenberg",
    "hermann", "hodgkin", "hoover", "hopper", "hypatia", "jackson", "jang", "jennings",
    "jepsen", "johnson", "joliot", "kalam", "kare", "keller", "kepler", "khorana", "kilby",
    "knuth", "kowalevski", "lalande", "lamarr", "lamport", "leakey", "leavitt", "lewin",
    "lichterman", "liskov", "lovelace", "lumiere", "mahavira", "mayer", "mccarthy",
    "mcclintock", "mclean", "meitner", "mendel", "mestorf", "minsky", "mirzakhani", "morse",
    "murdock", "napier", "nash", "neumann", "newton", "nobel", "noether", "northcutt",
    "noyce", "pare", "pascal", "pasteur", "payne", "perlman", "pike", "poincare", "ptolemy",
    "raman", "ramanujan", "ride", "ritchie", "roentgen", "rosalind", "saha", "sammet",
    "shaw", "shirley", "shockley", "sinoussi", "snyder", "spence", "stonebraker", "swanson",
    "swartz", "swirles", "tesla", "thompson", "torvalds", "turing", "varahamihira",
    "visvesvaraya", "wescoff", "wiles", "williams", "wilson", "wing", "wozniak", "wright",
    "yalow", "yonath",
];

/// A random `adjective_noun` name; `random` supplies the entropy.
pub(crate) fn random_name(random: u32) -> String {
    let a = ADJECTIVES[(random as usize) % ADJECTIVES.len()];
    let n = NOUNS[((random >> 16) as usize) % NOUNS.len()];
    if a == "boring" && n == "wozniak" {
        // Steve Wozniak is not boring (Docker's rule).
        return "bold_wozniak".into();
    }
    format!("{a}_{n}")
}

/// Docker's rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub(crate) fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_look_like_dockers() {
        for r in [0u32, 1, 0xffff_ffff, 0x1234_5678] {
            let n = random_name(r);
            let (a, b) = n.split_once('_').unwrap();
            assert!(ADJECTIVES.contains(&a) && NOUNS.contains(&b), "{n}");
            assert!(valid_name(&n));
        }
    }

    #[test]
    fn name_validation() {
        assert!(valid_name("web"));
        assert!(valid_name("web-1.a_b"));
        assert!(!valid_name(""));
        assert!(!valid_name("-web"));
        assert!(!valid_name("we b"));
        assert!(!valid_name("web/1"));
    }
}
