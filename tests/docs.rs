//! The README's settings table and metrics list are checked against the code, so they cannot rot.

use respipe::config::{SECTIONS, SETTINGS};

const README: &str = include_str!("../README.md");

/// The settings table as it must appear in the README, between the `settings` markers.
fn settings_table() -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    let mut table =
        String::from("| flag | env | file key (flat, or in its section) | default | what it does |\n|---|---|---|---|---|\n");
    for s in SETTINGS {
        let default = if s.default.is_empty() {
            "none".to_owned()
        } else {
            format!("`{}`", s.default)
        };
        let (section, name, _) = SECTIONS
            .iter()
            .find(|(.., flat)| *flat == s.key)
            .expect("every setting has a section");
        table.push_str(&format!(
            "| `{} {}` | `{}` | `{}`, `[{section}] {name}` | {} | {} |\n",
            s.flag,
            cell(s.value_name),
            s.env,
            s.key,
            default,
            cell(s.help)
        ));
    }
    table
}

fn between<'a>(text: &'a str, begin: &str, end: &str) -> &'a str {
    let start = text
        .find(begin)
        .unwrap_or_else(|| panic!("README lacks the marker {begin}"))
        + begin.len();
    let stop = text[start..]
        .find(end)
        .unwrap_or_else(|| panic!("README lacks the marker {end}"));
    text[start..start + stop].trim_matches('\n')
}

#[test]
fn readme_settings_table_matches_the_code() {
    let expected = settings_table();
    let actual = between(README, "<!-- settings:begin -->", "<!-- settings:end -->");
    assert_eq!(
        actual.trim(),
        expected.trim(),
        "README settings table is stale; replace it with:\n{expected}"
    );
}

#[test]
fn readme_lists_every_metric() {
    let names = respipe::metrics::ALL;
    let listed = between(README, "<!-- metrics:begin -->", "<!-- metrics:end -->");
    for name in names {
        assert!(
            listed.contains(&format!("`{name}`")),
            "README metrics list lacks {name}"
        );
    }
    let rows = listed.lines().filter(|l| l.starts_with("| `")).count();
    assert_eq!(
        rows,
        names.len(),
        "README lists a metric the code does not export"
    );
}
