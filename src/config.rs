//! `[tool.memline]` from pyproject.toml: parsed and checked here against a schema (the table of
//! keys in `pytest_memline/_keys.py`, handed over by Python), so that every bad value gets one
//! message that names the file, the key and the value, and a new key is one row of that table.

use std::collections::BTreeMap;

use crate::size::{parse_percent, parse_size, PERCENT_FORMS, SIZE_FORMS};
use toml::{Table, Value};

/// What a key holds, and so how its value is checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Bool,
    /// Bytes: an int, or a string with a unit.
    Size,
    /// A fraction, from a string such as "10%".
    Percent,
    Choice(Vec<String>),
    /// A whole number from `.0` to `.1` (`None`: no upper bound).
    Whole(u32, Option<u32>),
    /// A non-empty string.
    Text,
    /// An array of dotted module names.
    Modules,
    /// An array of non-empty strings (node ids or globs).
    Globs,
}

/// One key: its name and kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub name: String,
    pub kind: Kind,
}

/// The keys of `[tool.memline]` and of one `[[tool.memline.limits]]` entry (which also has
/// `match`), in documentation order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schema {
    pub keys: Vec<Spec>,
    pub rule_keys: Vec<Spec>,
}

/// A checked value.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Bool(bool),
    Int(u64),
    Float(f64),
    Text(String),
    List(Vec<String>),
}

/// `[tool.memline]`, checked: the keys that were set, and the `[[tool.memline.limits]]`
/// entries (each with its `match`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub values: BTreeMap<String, Parsed>,
    pub limits: Vec<BTreeMap<String, Parsed>>,
}

/// Parses pyproject.toml text. `Ok(None)`: no `[tool.memline]` table.
/// `file` names the file in error messages.
pub fn parse_pyproject(text: &str, file: &str, schema: &Schema) -> Result<Option<Config>, String> {
    let doc: Table = text
        .parse()
        .map_err(|e: toml::de::Error| syntax_error(text, file, &e))?;
    let Some(tool) = doc.get("tool") else {
        return Ok(None);
    };
    let Some(memline) = tool.as_table().and_then(|t| t.get("memline")) else {
        return Ok(None);
    };
    let Some(table) = memline.as_table() else {
        return Err(format!(
            "{file}: [tool.memline] must be a table, got {}",
            show(memline)
        ));
    };
    parse_table(table, file, schema).map(Some)
}

fn syntax_error(text: &str, file: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim();
    match e.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            format!("{file}:{line}:{col}: invalid TOML: {message}")
        }
        None => format!("{file}: invalid TOML: {message}"),
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// A value as the user wrote it, for messages.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Table(_) => "a table".into(),
        Value::Array(_) => format!("an array {v}"),
        other => other.to_string(),
    }
}

struct Ctx<'a> {
    file: &'a str,
    section: String,
}

impl Ctx<'_> {
    fn bad(&self, key: &str, v: &Value, expected: &str) -> String {
        format!(
            "{}: {} {key} = {}: expected {expected}",
            self.file,
            self.section,
            show(v)
        )
    }

    fn boolean(&self, key: &str, v: &Value) -> Result<bool, String> {
        v.as_bool().ok_or_else(|| self.bad(key, v, "true or false"))
    }

    fn size(&self, key: &str, v: &Value) -> Result<u64, String> {
        match v {
            // a TOML integer is an i64: never above MAX_SIZE
            Value::Integer(n) if *n >= 0 => Ok(*n as u64),
            Value::Integer(_) => Err(self.bad(key, v, "a size that is not negative")),
            Value::String(s) => parse_size(s).map_err(|e| {
                format!(
                    "{}: {} {key} = {:?}: {}; expected {SIZE_FORMS}",
                    self.file, self.section, s, e.reason
                )
            }),
            _ => Err(self.bad(key, v, SIZE_FORMS)),
        }
    }

    fn percent(&self, key: &str, v: &Value) -> Result<f64, String> {
        match v {
            Value::String(s) => parse_percent(s).map_err(|e| {
                format!(
                    "{}: {} {key} = {:?}: {}; expected {PERCENT_FORMS}",
                    self.file, self.section, s, e.reason
                )
            }),
            _ => Err(self.bad(key, v, PERCENT_FORMS)),
        }
    }

    fn choice(&self, key: &str, v: &Value, choices: &[&str]) -> Result<String, String> {
        match v.as_str() {
            Some(s) if choices.contains(&s) => Ok(s.to_string()),
            _ => Err(self.bad(key, v, &format!("one of {}", quoted(choices)))),
        }
    }

    fn whole(&self, key: &str, v: &Value, min: u32, max: u32) -> Result<u32, String> {
        v.as_integer()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| self.bad(key, v, &format!("a whole number from {min} to {max}")))
    }

    fn string(&self, key: &str, v: &Value) -> Result<String, String> {
        match v.as_str() {
            Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
            _ => Err(self.bad(key, v, "a non-empty string")),
        }
    }

    fn unknown(&self, key: &str, known: &[&str]) -> String {
        format!(
            "{}: {}: unknown key {key:?}; known keys: {}",
            self.file,
            self.section,
            known.join(", ")
        )
    }
}

fn quoted(choices: &[&str]) -> String {
    choices
        .iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn names(specs: &[Spec], extra: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    out.extend(specs.iter().map(|s| s.name.clone()));
    out
}

impl Ctx<'_> {
    fn value(&self, key: &str, kind: &Kind, v: &Value) -> Result<Parsed, String> {
        Ok(match kind {
            Kind::Bool => Parsed::Bool(self.boolean(key, v)?),
            Kind::Size => Parsed::Int(self.size(key, v)?),
            Kind::Percent => Parsed::Float(self.percent(key, v)?),
            Kind::Choice(choices) => {
                let choices: Vec<&str> = choices.iter().map(String::as_str).collect();
                Parsed::Text(self.choice(key, v, &choices)?)
            }
            Kind::Whole(min, Some(max)) => Parsed::Int(u64::from(self.whole(key, v, *min, *max)?)),
            Kind::Whole(min, None) => Parsed::Int(
                v.as_integer()
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|n| n >= min)
                    .map(u64::from)
                    .ok_or_else(|| self.bad(key, v, &format!("a whole number, {min} or more")))?,
            ),
            Kind::Text => Parsed::Text(self.string(key, v)?),
            Kind::Modules => Parsed::List(self.list(
                key,
                v,
                "an array of module names",
                "an array of dotted module names such as [\"mypkg\", \"mypkg.io\"]",
                is_module_name,
            )?),
            Kind::Globs => Parsed::List(self.list(
                key,
                v,
                "an array of test node ids or globs",
                "an array of test node ids or globs such as [\"tests/test_etl.py::test_load\"]",
                |s| !s.trim().is_empty(),
            )?),
        })
    }

    fn list(
        &self,
        key: &str,
        v: &Value,
        not_array: &str,
        bad_item: &str,
        ok: fn(&str) -> bool,
    ) -> Result<Vec<String>, String> {
        let items = v.as_array().ok_or_else(|| self.bad(key, v, not_array))?;
        items
            .iter()
            .map(|item| match item.as_str() {
                Some(s) if ok(s) => Ok(s.to_string()),
                _ => Err(self.bad(key, v, bad_item)),
            })
            .collect()
    }
}

fn parse_table(table: &Table, file: &str, schema: &Schema) -> Result<Config, String> {
    let ctx = Ctx {
        file,
        section: "[tool.memline]".into(),
    };
    let mut c = Config::default();
    for (key, v) in table {
        if key == "limits" {
            let items = v
                .as_array()
                .ok_or_else(|| ctx.bad(key, v, "[[tool.memline.limits]] entries"))?;
            for (i, item) in items.iter().enumerate() {
                c.limits.push(parse_rule(item, i + 1, file, schema)?);
            }
            continue;
        }
        let Some(spec) = schema.keys.iter().find(|s| s.name == *key) else {
            let known = names(&schema.keys, &[]);
            let mut known: Vec<&str> = known.iter().map(String::as_str).collect();
            known.push("limits");
            return Err(ctx.unknown(key, &known));
        };
        c.values.insert(key.clone(), ctx.value(key, &spec.kind, v)?);
    }
    Ok(c)
}

fn parse_rule(
    v: &Value,
    number: usize,
    file: &str,
    schema: &Schema,
) -> Result<BTreeMap<String, Parsed>, String> {
    let ctx = Ctx {
        file,
        section: format!("[[tool.memline.limits]] #{number}"),
    };
    let Some(table) = v.as_table() else {
        return Err(format!(
            "{file}: {}: expected a table, got {}",
            ctx.section,
            show(v)
        ));
    };
    let mut rule = BTreeMap::new();
    for (key, v) in table {
        if key == "match" || key == "fixture" {
            let text = ctx.string(key, v)?;
            if key == "fixture" && !is_identifier(&text) {
                return Err(ctx.bad(key, v, "a fixture's name (a Python identifier)"));
            }
            rule.insert(key.clone(), Parsed::Text(text));
            continue;
        }
        let Some(spec) = schema.rule_keys.iter().find(|s| s.name == *key) else {
            let known = names(&schema.rule_keys, &["match", "fixture"]);
            let known: Vec<&str> = known.iter().map(String::as_str).collect();
            return Err(ctx.unknown(key, &known));
        };
        rule.insert(key.clone(), ctx.value(key, &spec.kind, v)?);
    }
    if rule.contains_key("fixture") {
        // a fixture's budget: its setup's peak growth and its lines (the rest is per test)
        if let Some(key) = rule
            .keys()
            .find(|k| !FIXTURE_RULE_KEYS.contains(&k.as_str()))
        {
            return Err(format!(
                "{file}: {}: {key:?} does not apply to a fixture; a rule with \"fixture\" takes {}",
                ctx.section,
                FIXTURE_RULE_KEYS.join(", ")
            ));
        }
    } else if !rule.contains_key("match") {
        return Err(format!(
            "{file}: {}: missing key \"match\" (a glob over test node ids, e.g. \"tests/test_etl.py::*\") or \"fixture\" (a fixture's name)",
            ctx.section
        ));
    }
    Ok(rule)
}

/// The keys of a `[[tool.memline.limits]]` entry that names a fixture.
const FIXTURE_RULE_KEYS: [&str; 4] = ["fixture", "match", "test_limit", "line_limit"];

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_')
}

fn is_module_name(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(is_identifier)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, kind: Kind) -> Spec {
        Spec {
            name: name.into(),
            kind,
        }
    }

    /// The shape of pytest_memline/_keys.py's table (a test of the parser, not of the table).
    fn schema() -> Schema {
        let choice = |c: &[&str]| Kind::Choice(c.iter().map(|s| s.to_string()).collect());
        Schema {
            keys: vec![
                spec("enabled", Kind::Bool),
                spec("test_limit", Kind::Size),
                spec("line_limit", Kind::Size),
                spec("tables", choice(&["failed", "all", "none"])),
                spec("top", Kind::Whole(0, None)),
                spec("baseline", Kind::Text),
                spec("tolerance", Kind::Percent),
                spec("samples", Kind::Whole(1, Some(100))),
                spec("accept", Kind::Globs),
                spec("include", Kind::Modules),
            ],
            rule_keys: vec![
                spec("test_limit", Kind::Size),
                spec("tolerance", Kind::Percent),
            ],
        }
    }

    fn parse(text: &str) -> Result<Option<Config>, String> {
        parse_pyproject(text, "pyproject.toml", &schema())
    }

    #[test]
    fn no_table_is_none() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("[project]\nname = 'x'\n"), Ok(None));
        assert_eq!(parse("[tool.black]\nline-length = 1\n"), Ok(None));
    }

    #[test]
    fn values_by_kind() {
        let c = parse(
            r#"
[tool.memline]
enabled = true
test_limit = "500MiB"
line_limit = 1048576
tables = "all"
top = 5
baseline = ".memline/baseline.json"
tolerance = "10%"
samples = 8
accept = ["tests/test_etl.py::test_load"]
include = ["mypkg", "mypkg.io"]

[[tool.memline.limits]]
match = "tests/test_etl.py::*"
test_limit = "2GiB"

[[tool.memline.limits]]
match = "tests/test_x.py::test_y"
tolerance = "20%"
"#,
        )
        .unwrap()
        .unwrap();
        let v = |k: &str| c.values.get(k).cloned();
        assert_eq!(v("enabled"), Some(Parsed::Bool(true)));
        assert_eq!(v("test_limit"), Some(Parsed::Int(500 << 20)));
        assert_eq!(v("line_limit"), Some(Parsed::Int(1 << 20)));
        assert_eq!(v("tables"), Some(Parsed::Text("all".into())));
        assert_eq!(v("top"), Some(Parsed::Int(5)));
        assert_eq!(v("tolerance"), Some(Parsed::Float(0.1)));
        assert_eq!(v("samples"), Some(Parsed::Int(8)));
        assert_eq!(
            v("accept"),
            Some(Parsed::List(vec!["tests/test_etl.py::test_load".into()]))
        );
        assert_eq!(
            v("include"),
            Some(Parsed::List(vec!["mypkg".into(), "mypkg.io".into()]))
        );
        assert_eq!(c.limits.len(), 2);
        assert_eq!(
            c.limits[0].get("match"),
            Some(&Parsed::Text("tests/test_etl.py::*".into()))
        );
        assert_eq!(c.limits[0].get("test_limit"), Some(&Parsed::Int(2 << 30)));
        assert_eq!(c.limits[1].get("tolerance"), Some(&Parsed::Float(0.2)));
        assert_eq!(c.limits[1].get("test_limit"), None);
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let e = parse("[tool.memline]\ntest_limit = \"60MiB\n").unwrap_err();
        assert!(e.starts_with("pyproject.toml:2:"), "{e}");
        assert!(e.contains("invalid TOML"), "{e}");
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let e = parse("[tool.memline]\ntest_limit = \"sixty\"\n").unwrap_err();
        assert!(
            e.starts_with("pyproject.toml: [tool.memline] test_limit = \"sixty\": not a size"),
            "{e}"
        );
        assert!(e.contains("MiB"), "{e}");
        let e = parse("[tool.memline]\nline_limit = -3\n").unwrap_err();
        assert!(e.contains("line_limit = -3"), "{e}");
        let e = parse("[tool.memline]\nenabled = \"yes\"\n").unwrap_err();
        assert!(
            e.contains("enabled = \"yes\": expected true or false"),
            "{e}"
        );
        let e = parse("[tool.memline]\ntables = \"some\"\n").unwrap_err();
        assert!(e.contains("\"failed\", \"all\", \"none\""), "{e}");
        let e = parse("[tool.memline]\ntolerance = 10\n").unwrap_err();
        assert!(e.contains("tolerance = 10"), "{e}");
        let e = parse("[tool.memline]\ninclude = [\"a b\"]\n").unwrap_err();
        assert!(e.contains("include"), "{e}");
        let e = parse("[tool.memline]\ntop = -1\n").unwrap_err();
        assert_eq!(
            e,
            "pyproject.toml: [tool.memline] top = -1: expected a whole number, 0 or more"
        );
        let e = parse("[tool.memline]\nsamples = 0\n").unwrap_err();
        assert_eq!(
            e,
            "pyproject.toml: [tool.memline] samples = 0: expected a whole number from 1 to 100"
        );
        let e = parse("[tool.memline]\naccept = \"tests/*\"\n").unwrap_err();
        assert!(e.contains("accept = \"tests/*\": expected an array"), "{e}");
        let e = parse("[tool.memline]\naccept = [\"\"]\n").unwrap_err();
        assert!(
            e.contains("expected an array of test node ids or globs"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys() {
        let e = parse("[tool.memline]\ntest_limt = \"1MiB\"\n").unwrap_err();
        assert!(e.contains("unknown key \"test_limt\""), "{e}");
        assert!(e.ends_with("known keys: enabled, test_limit, line_limit, tables, top, baseline, tolerance, samples, accept, include, limits"), "{e}");
        let e = parse("[[tool.memline.limits]]\nmatch = \"*\"\nlimit = 5\n").unwrap_err();
        assert!(
            e.contains("[[tool.memline.limits]] #1: unknown key \"limit\"; known keys: match, fixture, test_limit, tolerance"),
            "{e}"
        );
        let e = parse("[[tool.memline.limits]]\ntest_limit = 5\n").unwrap_err();
        assert!(e.contains("missing key \"match\""), "{e}");
        assert!(e.contains("or \"fixture\""), "{e}");
        let e = parse("[tool]\nmemline = 3\n").unwrap_err();
        assert!(e.contains("must be a table"), "{e}");
    }

    #[test]
    fn fixture_rules() {
        let c = parse("[[tool.memline.limits]]\nfixture = \"big_frame\"\ntest_limit = \"5MiB\"\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            c.limits[0].get("fixture"),
            Some(&Parsed::Text("big_frame".into()))
        );
        assert!(!c.limits[0].contains_key("match"));
        let e = parse("[[tool.memline.limits]]\nfixture = \"big frame\"\n").unwrap_err();
        assert!(
            e.contains("fixture = \"big frame\": expected a fixture's name"),
            "{e}"
        );
        let e =
            parse("[[tool.memline.limits]]\nfixture = \"f\"\ntolerance = \"5%\"\n").unwrap_err();
        assert!(
            e.contains("#1: \"tolerance\" does not apply to a fixture; a rule with \"fixture\" takes fixture, match, test_limit, line_limit"),
            "{e}"
        );
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncdé\nx", 8), (3, 1));
        assert_eq!(line_col("ab\ncdé", 7), (2, 4));
        assert_eq!(
            line_col("ab\ncdé", 6),
            (2, 3),
            "inside a character: its start"
        );
        assert_eq!(line_col("", 0), (1, 1));
    }
}
