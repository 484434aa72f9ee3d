//! `[tool.memline]` from pyproject.toml: parsed and checked here, so every bad value gets one
//! message that names the file, the key and the value.

use crate::size::{parse_percent, parse_size, PERCENT_FORMS, SIZE_FORMS};
use toml::{Table, Value};

/// Keys of `[tool.memline]`, in documentation order.
pub const KEYS: &[&str] = &[
    "enabled",
    "test_limit",
    "line_limit",
    "tables",
    "top",
    "peak",
    "metric",
    "baseline",
    "tolerance",
    "noise_floor",
    "samples",
    "confirm",
    "accept",
    "isolate",
    "include",
    "malloc",
    "limits",
];

/// Keys of one `[[tool.memline.limits]]` entry.
pub const LIMIT_KEYS: &[&str] = &[
    "match",
    "test_limit",
    "line_limit",
    "tolerance",
    "noise_floor",
];

pub const TABLES_CHOICES: &[&str] = &["failed", "all", "none"];
pub const METRIC_CHOICES: &[&str] = &["rss", "heap"];
pub const MALLOC_CHOICES: &[&str] = &["fixed", "native"];
pub const ISOLATE_CHOICES: &[&str] = &["off", "fork"];
/// The most saved runs a baseline may keep per test.
pub const MAX_SAMPLES: u32 = 100;
/// The most re-runs a suspected regression may get.
pub const MAX_CONFIRM: u32 = 20;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitRule {
    pub pattern: String,
    pub test_limit: Option<u64>,
    pub line_limit: Option<u64>,
    pub tolerance: Option<f64>,
    pub noise_floor: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub enabled: Option<bool>,
    pub test_limit: Option<u64>,
    pub line_limit: Option<u64>,
    pub tables: Option<String>,
    pub top: Option<u32>,
    pub peak: Option<bool>,
    pub metric: Option<String>,
    pub baseline: Option<String>,
    pub tolerance: Option<f64>,
    pub noise_floor: Option<u64>,
    pub samples: Option<u32>,
    pub confirm: Option<u32>,
    pub accept: Option<Vec<String>>,
    pub isolate: Option<String>,
    pub include: Option<Vec<String>>,
    pub malloc: Option<String>,
    pub limits: Vec<LimitRule>,
}

/// Parses pyproject.toml text. `Ok(None)`: no `[tool.memline]` table.
/// `file` names the file in error messages.
pub fn parse_pyproject(text: &str, file: &str) -> Result<Option<Config>, String> {
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
    parse_table(table, file).map(Some)
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

fn parse_table(table: &Table, file: &str) -> Result<Config, String> {
    let ctx = Ctx {
        file,
        section: "[tool.memline]".into(),
    };
    let mut c = Config::default();
    for (key, v) in table {
        match key.as_str() {
            "enabled" => c.enabled = Some(ctx.boolean(key, v)?),
            "test_limit" => c.test_limit = Some(ctx.size(key, v)?),
            "line_limit" => c.line_limit = Some(ctx.size(key, v)?),
            "tables" => c.tables = Some(ctx.choice(key, v, TABLES_CHOICES)?),
            "top" => {
                c.top = Some(
                    v.as_integer()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| ctx.bad(key, v, "a whole number, 0 or more"))?,
                )
            }
            "peak" => c.peak = Some(ctx.boolean(key, v)?),
            "metric" => c.metric = Some(ctx.choice(key, v, METRIC_CHOICES)?),
            "malloc" => c.malloc = Some(ctx.choice(key, v, MALLOC_CHOICES)?),
            "baseline" => c.baseline = Some(ctx.string(key, v)?),
            "tolerance" => c.tolerance = Some(ctx.percent(key, v)?),
            "noise_floor" => c.noise_floor = Some(ctx.size(key, v)?),
            "samples" => c.samples = Some(ctx.whole(key, v, 1, MAX_SAMPLES)?),
            "confirm" => c.confirm = Some(ctx.whole(key, v, 0, MAX_CONFIRM)?),
            "isolate" => c.isolate = Some(ctx.choice(key, v, ISOLATE_CHOICES)?),
            "accept" => {
                let items = v
                    .as_array()
                    .ok_or_else(|| ctx.bad(key, v, "an array of test node ids or globs"))?;
                let mut globs = Vec::with_capacity(items.len());
                for item in items {
                    match item.as_str() {
                        Some(s) if !s.trim().is_empty() => globs.push(s.to_string()),
                        _ => {
                            return Err(ctx.bad(
                                key,
                                v,
                                "an array of test node ids or globs such as [\"tests/test_etl.py::test_load\"]",
                            ))
                        }
                    }
                }
                c.accept = Some(globs);
            }
            "include" => {
                let items = v
                    .as_array()
                    .ok_or_else(|| ctx.bad(key, v, "an array of module names"))?;
                let mut names = Vec::with_capacity(items.len());
                for item in items {
                    match item.as_str() {
                        Some(s) if is_module_name(s) => names.push(s.to_string()),
                        _ => {
                            return Err(ctx.bad(
                                key,
                                v,
                                "an array of dotted module names such as [\"mypkg\", \"mypkg.io\"]",
                            ))
                        }
                    }
                }
                c.include = Some(names);
            }
            "limits" => {
                let items = v
                    .as_array()
                    .ok_or_else(|| ctx.bad(key, v, "[[tool.memline.limits]] entries"))?;
                for (i, item) in items.iter().enumerate() {
                    c.limits.push(parse_rule(item, i + 1, file)?);
                }
            }
            other => return Err(ctx.unknown(other, KEYS)),
        }
    }
    Ok(c)
}

fn parse_rule(v: &Value, number: usize, file: &str) -> Result<LimitRule, String> {
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
    let mut rule = LimitRule::default();
    let mut has_match = false;
    for (key, v) in table {
        match key.as_str() {
            "match" => {
                rule.pattern = ctx.string(key, v)?;
                has_match = true;
            }
            "test_limit" => rule.test_limit = Some(ctx.size(key, v)?),
            "line_limit" => rule.line_limit = Some(ctx.size(key, v)?),
            "tolerance" => rule.tolerance = Some(ctx.percent(key, v)?),
            "noise_floor" => rule.noise_floor = Some(ctx.size(key, v)?),
            other => return Err(ctx.unknown(other, LIMIT_KEYS)),
        }
    }
    if !has_match {
        return Err(format!(
            "{file}: {}: missing key \"match\" (a glob over test node ids, e.g. \"tests/test_etl.py::*\")",
            ctx.section
        ));
    }
    Ok(rule)
}

fn is_module_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            let mut chars = part.chars();
            matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
                && chars.all(|c| c.is_alphanumeric() || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<Config>, String> {
        parse_pyproject(text, "pyproject.toml")
    }

    #[test]
    fn no_table_is_none() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("[project]\nname = 'x'\n"), Ok(None));
        assert_eq!(parse("[tool.black]\nline-length = 1\n"), Ok(None));
    }

    #[test]
    fn full_config() {
        let c = parse(
            r#"
[tool.memline]
enabled = true
test_limit = "500MiB"
line_limit = 1048576
tables = "all"
top = 5
peak = false
metric = "heap"
baseline = ".memline/baseline.json"
tolerance = "10%"
noise_floor = "1MiB"
include = ["mypkg", "mypkg.io"]
malloc = "native"
samples = 8
confirm = 0
accept = ["tests/test_etl.py::test_load"]
isolate = "fork"

[[tool.memline.limits]]
match = "tests/test_etl.py::*"
test_limit = "2GiB"
line_limit = "1GiB"

[[tool.memline.limits]]
match = "tests/test_x.py::test_y"
tolerance = "20%"
"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.enabled, Some(true));
        assert_eq!(c.test_limit, Some(500 << 20));
        assert_eq!(c.line_limit, Some(1 << 20));
        assert_eq!(c.tables.as_deref(), Some("all"));
        assert_eq!(c.top, Some(5));
        assert_eq!(c.peak, Some(false));
        assert_eq!(c.metric.as_deref(), Some("heap"));
        assert_eq!(c.tolerance, Some(0.1));
        assert_eq!(c.noise_floor, Some(1 << 20));
        assert_eq!(c.include, Some(vec!["mypkg".into(), "mypkg.io".into()]));
        assert_eq!(c.malloc.as_deref(), Some("native"));
        assert_eq!((c.samples, c.confirm), (Some(8), Some(0)));
        assert_eq!(c.accept, Some(vec!["tests/test_etl.py::test_load".into()]));
        assert_eq!(c.isolate.as_deref(), Some("fork"));
        assert_eq!(c.limits.len(), 2);
        assert_eq!(c.limits[0].pattern, "tests/test_etl.py::*");
        assert_eq!(c.limits[0].test_limit, Some(2 << 30));
        assert_eq!(c.limits[1].tolerance, Some(0.2));
        assert_eq!(c.limits[1].test_limit, None);
    }

    #[test]
    fn gate_keys_are_checked() {
        let e = parse("[tool.memline]\nsamples = 0\n").unwrap_err();
        assert_eq!(
            e,
            "pyproject.toml: [tool.memline] samples = 0: expected a whole number from 1 to 100"
        );
        let e = parse("[tool.memline]\nconfirm = \"3\"\n").unwrap_err();
        assert!(
            e.contains("confirm = \"3\": expected a whole number from 0 to 20"),
            "{e}"
        );
        let e = parse("[tool.memline]\nisolate = \"process\"\n").unwrap_err();
        assert!(
            e.contains("isolate = \"process\": expected one of \"off\", \"fork\""),
            "{e}"
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
        assert!(e.contains("top = -1"), "{e}");
    }

    #[test]
    fn unknown_keys() {
        let e = parse("[tool.memline]\ntest_limt = \"1MiB\"\n").unwrap_err();
        assert!(e.contains("unknown key \"test_limt\""), "{e}");
        assert!(e.contains("test_limit"), "{e}");
        let e = parse("[[tool.memline.limits]]\nmatch = \"*\"\nlimit = 5\n").unwrap_err();
        assert!(
            e.contains("[[tool.memline.limits]] #1: unknown key \"limit\""),
            "{e}"
        );
        let e = parse("[[tool.memline.limits]]\ntest_limit = 5\n").unwrap_err();
        assert!(e.contains("missing key \"match\""), "{e}");
        let e = parse("[tool]\nmemline = 3\n").unwrap_err();
        assert!(e.contains("must be a table"), "{e}");
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
