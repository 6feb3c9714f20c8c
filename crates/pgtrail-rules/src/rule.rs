//! Parsing and checking a rule file.

use std::collections::HashSet;
use std::time::Duration;

use cel::{Program, Value};
use serde::Deserialize;
use toml::Spanned;

use crate::RuleError;
use crate::vocabulary::{complete_event, context_for, event_fields};

/// How bad an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    /// Also load the built-in rule pack.
    #[serde(default)]
    builtin: bool,
    /// Values rules see as `settings.<name>` (the pack's knobs, and any of your own).
    #[serde(default)]
    settings: toml::Table,
    #[serde(default)]
    rule: Vec<RawRule>,
}

/// The built-in rule pack (see builtin.toml).
pub const BUILTIN: &str = include_str!("builtin.toml");

/// Defaults of the pack's settings; a file's [settings] overrides them one by one.
fn default_settings() -> serde_json::Map<String, serde_json::Value> {
    let value = serde_json::json!({
        "service_accounts": [],
        "superusers": ["postgres"],
        "bulk_read_rows": 10000,
        "business_hours": [8, 18],
        "direct_allowed_roles": [],
        "direct_allowed_local": false,
    });
    match value {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("an object literal"),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    condition: Spanned<String>,
    #[serde(default = "default_severity")]
    severity: Severity,
    #[serde(default)]
    description: String,
    #[serde(default)]
    group_by: Vec<String>,
    window_secs: Option<u64>,
    #[serde(default = "one")]
    threshold: u32,
    dedup_key: Option<Vec<String>>,
    #[serde(default)]
    suppress_secs: u64,
    #[serde(default = "default_resolve")]
    resolve_after_secs: u64,
    #[serde(default)]
    include_noise: bool,
}

fn default_severity() -> Severity {
    Severity::Medium
}
fn one() -> u32 {
    1
}
fn default_resolve() -> u64 {
    900
}

/// A checked rule, ready to run.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub description: String,
    pub severity: Severity,
    pub(crate) condition: Program,
    pub condition_text: String,
    pub group_by: Vec<String>,
    pub window: Option<Duration>,
    pub threshold: u32,
    pub dedup_key: Vec<String>,
    pub suppress: Duration,
    pub resolve_after: Duration,
    pub include_noise: bool,
}

/// The rules of one file (and the built-in pack when it asks for it).
#[derive(Debug)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    /// What rules see as `settings`.
    pub settings: serde_json::Map<String, serde_json::Value>,
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl RuleSet {
    /// Parses and checks a rule file; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<RuleSet, RuleError> {
        let parsed: RuleFile =
            toml::from_str(text).map_err(|e| RuleError::Toml { file: file.to_owned(), message: e.to_string() })?;
        let mut settings = default_settings();
        for (name, value) in &parsed.settings {
            let value = serde_json::to_value(value)
                .map_err(|e| RuleError::Toml { file: file.to_owned(), message: format!("settings.{name}: {e}") })?;
            settings.insert(name.clone(), value);
        }
        let mut rules = Vec::new();
        if parsed.builtin {
            let pack: RuleFile = toml::from_str(BUILTIN).expect("the built-in pack is valid TOML");
            rules = Self::check(pack.rule, BUILTIN, "builtin rule pack", &settings, &mut HashSet::new())?;
        }
        let mut names: HashSet<String> = rules.iter().map(|r: &Rule| r.name.clone()).collect();
        rules.extend(Self::check(parsed.rule, text, file, &settings, &mut names)?);
        Ok(RuleSet { rules, settings })
    }

    fn check(
        raw_rules: Vec<RawRule>,
        text: &str,
        file: &str,
        settings: &serde_json::Map<String, serde_json::Value>,
        names: &mut HashSet<String>,
    ) -> Result<Vec<Rule>, RuleError> {
        let mut sample = event_fields(&complete_event());
        sample.insert("settings".into(), serde_json::Value::Object(settings.clone()));
        let known: HashSet<&str> = sample.keys().map(String::as_str).collect();
        let sample_context = context_for(&sample);
        let mut rules = Vec::with_capacity(raw_rules.len());
        for raw in raw_rules {
            let name = raw.name.get_ref().trim().to_owned();
            let invalid = |span: std::ops::Range<usize>, message: String| RuleError::Invalid {
                file: file.to_owned(),
                line: line_of(text, span.start),
                rule: name.clone(),
                message,
            };
            let name_span = raw.name.span();
            if name.is_empty() {
                return Err(invalid(name_span, "the name is empty".into()));
            }
            if !names.insert(name.clone()) {
                return Err(invalid(name_span, "another rule has this name".into()));
            }
            let cond_span = raw.condition.span();
            let condition_text = raw.condition.into_inner();
            let condition = Program::compile(&condition_text)
                .map_err(|e| invalid(cond_span.clone(), format!("condition does not parse: {e}")))?;
            let references = condition.references();
            let bound = macro_variables(&condition_text);
            let mut unknown: Vec<&str> = references
                .variables()
                .into_iter()
                .filter(|v| !known.contains(v) && !bound.iter().any(|b| b == v))
                .collect();
            unknown.sort_unstable();
            if !unknown.is_empty() {
                return Err(invalid(
                    cond_span,
                    format!("condition names {} which is not an event field", unknown.join(", ")),
                ));
            }
            match condition.execute(&sample_context) {
                Ok(Value::Bool(_)) => {}
                Ok(other) => {
                    return Err(invalid(
                        cond_span,
                        format!("condition must be true or false, but gives {}", type_name(&other)),
                    ));
                }
                Err(e) => return Err(invalid(cond_span, format!("condition has a type error: {e}"))),
            }
            for field in raw.group_by.iter().chain(raw.dedup_key.iter().flatten()) {
                if !known.contains(field.as_str()) {
                    return Err(invalid(
                        name_span.clone(),
                        format!("{field:?} (in group_by or dedup_key) is not an event field"),
                    ));
                }
            }
            if raw.threshold == 0 {
                return Err(invalid(name_span, "threshold must be at least 1".into()));
            }
            if raw.threshold > 1 && raw.window_secs.is_none() {
                return Err(invalid(
                    name_span,
                    "a threshold above 1 needs window_secs (count within what time?)".into(),
                ));
            }
            if raw.window_secs == Some(0) || raw.resolve_after_secs == 0 {
                return Err(invalid(name_span, "window_secs and resolve_after_secs must be positive".into()));
            }
            rules.push(Rule {
                name,
                description: raw.description,
                severity: raw.severity,
                condition,
                condition_text,
                dedup_key: raw.dedup_key.unwrap_or_else(|| raw.group_by.clone()),
                group_by: raw.group_by,
                window: raw.window_secs.map(Duration::from_secs),
                threshold: raw.threshold,
                suppress: Duration::from_secs(raw.suppress_secs),
                resolve_after: Duration::from_secs(raw.resolve_after_secs),
                include_noise: raw.include_noise,
            });
        }
        Ok(rules)
    }

    /// Reads and checks a rule file.
    pub fn load(path: &std::path::Path) -> Result<RuleSet, RuleError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| RuleError::Toml { file: path.display().to_string(), message: format!("cannot read: {e}") })?;
        RuleSet::parse(&text, &path.display().to_string())
    }
}

/// Names bound by comprehension macros (`list.exists(o, ...)`, `all`, `exists_one`,
/// `map`, `filter`): variables of the condition, not event fields.
fn macro_variables(condition: &str) -> Vec<String> {
    let mut out = Vec::new();
    for name in ["exists", "all", "exists_one", "map", "filter"] {
        let needle = format!(".{name}(");
        let mut rest = condition;
        while let Some(at) = rest.find(&needle) {
            rest = &rest[at + needle.len()..];
            let ident: String =
                rest.trim_start().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !ident.is_empty() && rest.trim_start()[ident.len()..].trim_start().starts_with(',') {
                out.push(ident);
            }
        }
    }
    out
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::List(_) => "a list",
        Value::Map(_) => "a map",
        Value::Int(_) | Value::UInt(_) | Value::Float(_) => "a number",
        Value::String(_) => "a string",
        Value::Bytes(_) => "bytes",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
        _ => "a value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        RuleSet::parse(text, "rules.toml").unwrap_err().to_string()
    }

    #[test]
    fn a_good_file_loads() {
        let set = RuleSet::parse(
            r#"
[[rule]]
name = "failed logins"
condition = 'class == "CONNECT" && sqlState == "28P01"'
severity = "high"
group_by = ["dbUserName"]
window_secs = 60
threshold = 5

[[rule]]
name = "bulk read"
condition = 'class == "READ" && rowCount > 10000'

[[rule]]
name = "salaries"
condition = 'objects.exists(o, o.name == "salaries") && paramList.all(p, p != "x")'
"#,
            "rules.toml",
        )
        .unwrap();
        assert_eq!(set.rules.len(), 3);
        assert_eq!(set.rules[0].dedup_key, vec!["dbUserName"]);
        assert_eq!(set.rules[1].severity, Severity::Medium);
    }

    #[test]
    fn errors_name_the_line_and_say_what_is_wrong() {
        let syntax = error("[[rule]]\nname = \"x\"\n\ncondition = 'class == '\n");
        assert!(syntax.starts_with("rules.toml:4: rule \"x\": condition does not parse"), "{syntax}");
        let unknown = error("[[rule]]\nname = \"x\"\ncondition = 'klass == \"READ\"'\n");
        assert!(
            unknown.contains("rules.toml:3:") && unknown.contains("klass which is not an event field"),
            "{unknown}"
        );
        let not_bool = error("[[rule]]\nname = \"x\"\ncondition = 'rowCount + 1'\n");
        assert!(not_bool.contains("must be true or false, but gives a number"), "{not_bool}");
        let types = error("[[rule]]\nname = \"x\"\ncondition = 'rowCount + \"many\" > 0'\n");
        assert!(types.contains("rules.toml:3:") && types.contains("type error"), "{types}");
        let threshold = error("[[rule]]\nname = \"x\"\ncondition = 'true'\nthreshold = 3\n");
        assert!(threshold.contains("needs window_secs"), "{threshold}");
        let field = error("[[rule]]\nname = \"x\"\ncondition = 'true'\ngroup_by = [\"user\"]\n");
        assert!(field.contains("\"user\" (in group_by or dedup_key) is not an event field"), "{field}");
        let toml = error("[[rule]]\nname = \"x\"\ncondition = 'true'\nseverity = \"urgent\"\n");
        assert!(toml.contains("line 4") || toml.contains("urgent"), "{toml}");
        let dup = error("[[rule]]\nname = \"x\"\ncondition = 'true'\n[[rule]]\nname = \"x\"\ncondition = 'true'\n");
        assert!(dup.contains("rules.toml:5:") && dup.contains("another rule has this name"), "{dup}");
    }
}
