//! The admin console's command parser, fed a Query message's text as the
//! console takes it (up to the first NUL, lossily decoded).

use crate::admin::command::Arg;
use crate::admin::parse;

/// Asserts: a parsed command is named by the text's first words (any
/// case, after trimming and one `;`); a database argument appears exactly
/// where the command takes one, is never empty and never holds a space;
/// the canonical spelling of a parse (upper-case name, quoted database)
/// parses back to the same thing, and so does the lower-case one.
pub fn admin(data: &[u8]) {
    let text = data.split(|&b| b == 0).next().unwrap_or_default();
    let text = String::from_utf8_lossy(text);
    let Some((command, database)) = parse(&text) else {
        return;
    };
    let name = command.name();
    let trimmed = text.trim();
    let trimmed = trimmed.strip_suffix(';').unwrap_or(trimmed);
    let words: Vec<&str> = trimmed.split_whitespace().collect();
    let name_words: Vec<&str> = name.split(' ').collect();
    assert!(words.len() >= name_words.len());
    for (n, w) in name_words.iter().zip(&words) {
        assert!(n.eq_ignore_ascii_case(w), "{name} from {text:?}");
    }
    match (command.arg(), &database) {
        (Arg::Nothing, Some(db)) => panic!("{name} took an argument {db:?}"),
        (Arg::Database, None) => panic!("{name} ran without its database"),
        _ => {}
    }
    if let Some(db) = &database {
        assert!(!db.is_empty() && !db.contains(char::is_whitespace));
    }
    let canonical = match &database {
        Some(db) => format!("{name} \"{}\";", db.replace('"', "\"\"")),
        None => format!("{name};"),
    };
    let again = parse(&canonical).map(|(c, db)| (c.name(), db));
    assert_eq!(again, Some((name, database.clone())), "{canonical:?}");
    let lower = parse(&canonical.to_lowercase()).map(|(c, db)| (c.name(), db));
    let lowered = database.as_ref().map(|db| db.to_lowercase());
    assert_eq!(lower, Some((name, lowered)), "{canonical:?} in lower case");
}
