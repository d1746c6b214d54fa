//! Property tests of the layer-name globs that configs and QuEST's selection use: never a
//! panic or a blow-up on any pattern, and agreement with two independent references: the
//! `regex` crate (the glob translated to an anchored regex) and a recursive definition.

use dmq_calib::glob_match;
use proptest::prelude::*;

/// The definition: `*` matches any run, `?` one character, anything else itself.
fn reference(p: &[char], s: &[char]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some('*'), _) => reference(&p[1..], s) || (!s.is_empty() && reference(p, &s[1..])),
        (Some('?'), Some(_)) => reference(&p[1..], &s[1..]),
        (Some(c), Some(d)) if c == d => reference(&p[1..], &s[1..]),
        _ => false,
    }
}

fn name() -> impl Strategy<Value = String> {
    // diffusers-like names over a small alphabet, so that matches are frequent
    proptest::string::string_regex("[ab._0-9]{0,12}").unwrap()
}

fn pattern() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[ab._0-9*?]{0,10}").unwrap()
}

/// The glob as an anchored regex: `*` → `.*`, `?` → `.`, everything else literal.
fn as_regex(p: &str) -> regex::Regex {
    let mut r = String::from("(?s)^");
    for c in p.chars() {
        match c {
            '*' => r.push_str(".*"),
            '?' => r.push('.'),
            c => r.push_str(&regex::escape(&c.to_string())),
        }
    }
    r.push('$');
    regex::Regex::new(&r).expect("an escaped pattern is a valid regex")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn glob_agrees_with_a_regex(p in pattern(), s in name()) {
        prop_assert_eq!(glob_match(&p, &s), as_regex(&p).is_match(&s), "pattern {} name {}", p, s);
    }

    #[test]
    fn glob_agrees_with_the_definition(p in pattern(), s in name()) {
        let pc: Vec<char> = p.chars().collect();
        let sc: Vec<char> = s.chars().collect();
        prop_assert_eq!(glob_match(&p, &s), reference(&pc, &sc), "pattern {} name {}", p, s);
    }

    #[test]
    fn a_name_matches_itself_and_star(s in name()) {
        prop_assert!(glob_match(&s, &s));
        prop_assert!(glob_match("*", &s));
        let q: String = s.chars().map(|_| '?').collect();
        prop_assert!(glob_match(&q, &s));
    }
}

/// Many stars against a long non-matching name: linear-ish time, not exponential.
#[test]
fn pathological_patterns_finish() {
    let p = "*a".repeat(40) + "b";
    let s = "a".repeat(4000);
    let t = std::time::Instant::now();
    assert!(!glob_match(&p, &s));
    assert!(t.elapsed().as_secs_f64() < 30.0, "glob matching blew up");
}
