//! chimed.example.toml stays in step with `chimed::config::Config`:
//!
//! 1. it parses into `Config` (which has `deny_unknown_fields`, so a misspelt or removed
//!    option fails here) and passes `Config::load`'s validation;
//! 2. every field of `Config` appears in it, set or commented out (`# key = value`, for
//!    options whose default is "unset", like `turn_secret`). The field list comes from the
//!    struct itself: serde's derive hands its field names to `Deserializer::deserialize_struct`,
//!    and a tiny deserializer below records them. No copy of the list to keep up to date, no
//!    parsing of src/config.rs, nothing added to src/;
//! 3. the values it sets are the defaults (`Debug` of the parsed file equals `Debug` of
//!    `Config::default()`), and the commented-out lines, uncommented, still parse;
//! 4. every option has a comment line right above it;
//! 5. every command-line flag (from clap's own definition of `Args`) is named in the
//!    file's header, and each flag named there exists.

use std::collections::BTreeSet;
use std::path::PathBuf;

use chimed::config::{Args, Config};
use serde::de::{self, Deserialize, Visitor};

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("chimed.example.toml")
}

fn example() -> String {
    std::fs::read_to_string(example_path()).expect("read chimed.example.toml")
}

/// The field names `#[derive(Deserialize)]` declares for `T`.
fn struct_fields<'de, T: Deserialize<'de>>() -> Vec<&'static str> {
    #[derive(Debug)]
    struct Fields(Vec<&'static str>);
    impl std::fmt::Display for Fields {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "fields {:?}", self.0)
        }
    }
    impl std::error::Error for Fields {}
    impl de::Error for Fields {
        fn custom<M: std::fmt::Display>(msg: M) -> Self {
            panic!("not a struct: {msg}")
        }
    }

    struct Probe;
    impl<'de> de::Deserializer<'de> for Probe {
        type Error = Fields;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Fields> {
            panic!("not a struct")
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Fields> {
            Err(Fields(fields.to_vec()))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }

    match T::deserialize(Probe) {
        Err(Fields(f)) => f,
        Ok(_) => panic!("the probe cannot produce a value"),
    }
}

/// Keys set in the file (`key = ...`) and keys commented out (`# key = ...`).
fn keys(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let key = |line: &str| -> Option<String> {
        let (k, _) = line.split_once('=')?;
        let k = k.trim();
        (!k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
        .then(|| k.into())
    };
    let (mut set, mut commented) = (BTreeSet::new(), BTreeSet::new());
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix('#') {
            commented.extend(key(rest));
        } else {
            set.extend(key(line));
        }
    }
    (set, commented)
}

#[test]
fn example_parses_and_validates() {
    let cfg: Config = toml::from_str(&example()).unwrap_or_else(|e| panic!("chimed.example.toml: {e}"));
    assert!(cfg.workers >= 2);
    let args = Args {
        config: Some(example_path()),
        ..Args::default()
    };
    Config::load(&args).unwrap_or_else(|e| panic!("chimed.example.toml: {e}"));
}

#[test]
fn example_sets_every_option_to_its_default() {
    let text = example();
    let fields: BTreeSet<String> = struct_fields::<Config>().into_iter().map(String::from).collect();
    assert!(
        fields.contains("listen") && fields.contains("max_frame_bytes"),
        "probe: {fields:?}"
    );

    // The top-level table's keys, from the TOML parser (not from the line scan).
    let table: toml::Table = toml::from_str(&text).unwrap();
    let set: BTreeSet<String> = table.keys().cloned().collect();
    let (scanned, commented) = keys(&text);
    assert_eq!(set, scanned, "the line scan disagrees with the TOML parser");
    assert!(
        set.is_disjoint(&commented),
        "set and commented out: {:?}",
        set.intersection(&commented)
    );

    let in_file: BTreeSet<String> = set.union(&commented).cloned().collect();
    let missing: Vec<_> = fields.difference(&in_file).collect();
    let unknown: Vec<_> = in_file.difference(&fields).collect();
    assert!(
        missing.is_empty(),
        "options of Config missing from chimed.example.toml: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "options in chimed.example.toml that Config does not have: {unknown:?}"
    );

    let parsed: Config = toml::from_str(&text).unwrap();
    assert_eq!(
        format!("{parsed:#?}"),
        format!("{:#?}", Config::default()),
        "chimed.example.toml must show the built-in defaults"
    );

    // The commented-out examples are valid too.
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if commented.iter().any(|k| rest.trim_start().starts_with(k.as_str())) => rest.trim_start(),
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    toml::from_str::<Config>(&uncommented).unwrap_or_else(|e| panic!("commented-out options: {e}"));
}

#[test]
fn every_option_has_a_comment() {
    let text = example();
    let lines: Vec<&str> = text.lines().collect();
    let (set, commented) = keys(&text);
    for (i, line) in lines.iter().enumerate() {
        let body = line.strip_prefix('#').map(str::trim_start).unwrap_or(line);
        let Some((k, _)) = body.split_once('=') else { continue };
        let k = k.trim();
        if !set.contains(k) && !commented.contains(k) {
            continue;
        }
        let above = if i > 0 { lines[i - 1] } else { "" };
        let above_is_comment = above.starts_with('#') && !keys(above).1.contains(k);
        assert!(above_is_comment, "`{k}` (line {}) has no comment line above it", i + 1);
    }
}

#[test]
fn header_names_every_flag() {
    use clap::CommandFactory;
    let text = example();
    let header: String = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ");
    let flags: BTreeSet<String> = Args::command()
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !matches!(*l, "help" | "version"))
        .map(|l| format!("--{l}"))
        .collect();
    assert!(flags.contains("--rate-limits"), "{flags:?}");
    let named: BTreeSet<String> = header
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(String::from)
        .collect();
    let missing: Vec<_> = flags.difference(&named).collect();
    let unknown: Vec<_> = named.difference(&flags).collect();
    assert!(
        missing.is_empty(),
        "flags not named in the header of chimed.example.toml: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "the header names flags chimed does not have: {unknown:?}"
    );
}
