//! The rule engine: matches events, counts them in sliding windows per group, and turns
//! breaches into alerts with dedup, suppression and auto-resolve. Pure: time comes from
//! the events (and from [`Engine::tick`]), so a replay gives the same alerts as live.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use pgtrail_event::ActivityEvent;

use crate::Severity;
use crate::rule::{Rule, RuleSet};
use crate::vocabulary::{context_for, event_fields};

/// A rule's state, as CloudWatch alarms have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Alarm {
    Ok,
    Alarm,
    InsufficientData,
}

impl Alarm {
    pub fn as_str(self) -> &'static str {
        match self {
            Alarm::Ok => "OK",
            Alarm::Alarm => "ALARM",
            Alarm::InsufficientData => "INSUFFICIENT_DATA",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

/// An alert: a rule in breach for one dedup key, or back to normal.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Alert {
    pub rule: String,
    pub severity: Severity,
    pub status: AlertStatus,
    /// Alerts with the same key are the same incident (PagerDuty's dedup_key).
    pub dedup_key: String,
    /// Matching events in the window when it fired.
    pub count: u32,
    #[serde(serialize_with = "das_time")]
    pub at: DateTime<Utc>,
    /// Why, in words.
    pub reason: String,
    /// The event that made it fire (none for a resolve).
    pub event: Option<ActivityEvent>,
}

fn das_time<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&pgtrail_event::format_das_time(t))
}

#[derive(Debug, Default)]
struct GroupState {
    window: VecDeque<DateTime<Utc>>,
    in_alarm: bool,
    last_match: Option<DateTime<Utc>>,
    dedup: String,
}

#[derive(Debug, Default)]
struct RuleState {
    /// Events that matched the condition.
    matches: u64,
    seen_events: bool,
    groups: HashMap<String, GroupState>,
    last_alert: HashMap<String, DateTime<Utc>>,
}

/// Runs a rule set over a stream of events.
#[derive(Debug)]
pub struct Engine {
    rules: Vec<Rule>,
    /// `settings` as CEL sees it, converted once.
    settings: cel::Value,
    state: Vec<RuleState>,
    /// Conditions that failed to evaluate (counted as no match).
    pub evaluation_errors: u64,
}

fn value_text(fields: &serde_json::Map<String, serde_json::Value>, name: &str) -> String {
    match fields.get(name) {
        None | Some(serde_json::Value::Null) => "-".into(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn chrono_duration(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Engine {
    pub fn new(rules: RuleSet) -> Engine {
        let state = rules.rules.iter().map(|_| RuleState::default()).collect();
        Engine {
            rules: rules.rules,
            settings: crate::vocabulary::cel_value(&serde_json::Value::Object(rules.settings)),
            state,
            evaluation_errors: 0,
        }
    }

    pub fn rules(&self) -> impl Iterator<Item = (&str, Severity)> {
        self.rules.iter().map(|r| (r.name.as_str(), r.severity))
    }

    /// Each rule's alarm state.
    pub fn alarms(&self) -> Vec<(&str, Alarm)> {
        self.rules
            .iter()
            .zip(&self.state)
            .map(|(rule, state)| {
                let alarm = if !state.seen_events {
                    Alarm::InsufficientData
                } else if state.groups.values().any(|g| g.in_alarm) {
                    Alarm::Alarm
                } else {
                    Alarm::Ok
                };
                (rule.name.as_str(), alarm)
            })
            .collect()
    }

    /// Each rule's name, matching events so far and alarm state.
    pub fn rule_status(&self) -> Vec<(&str, u64, Alarm)> {
        self.alarms().into_iter().zip(&self.state).map(|((name, alarm), state)| (name, state.matches, alarm)).collect()
    }

    /// Runs every rule on one event; returns the alerts it fires (resolves come from
    /// [`Engine::tick`], which this also runs at the event's time). A pgAudit record that
    /// confirms a proxy event (`confirms`) is the same statement seen twice: no rule runs
    /// on it, so nothing fires twice.
    pub fn process(&mut self, event: &ActivityEvent) -> Vec<Alert> {
        let at = event.log_time;
        let mut alerts = self.tick(at);
        if event.confirms.is_some() {
            return alerts;
        }
        let fields = event_fields(event);
        let mut context = context_for(&fields);
        context.add_variable_from_value("settings", self.settings.clone());
        for (rule, state) in self.rules.iter().zip(self.state.iter_mut()) {
            state.seen_events = true;
            if event.noise && !rule.include_noise {
                continue;
            }
            let matched = match rule.condition.execute(&context) {
                Ok(cel::Value::Bool(b)) => b,
                Ok(_) | Err(_) => {
                    self.evaluation_errors += 1;
                    false
                }
            };
            if !matched {
                continue;
            }
            state.matches += 1;
            let group_key: Vec<String> = rule.group_by.iter().map(|f| value_text(&fields, f)).collect();
            let group = state.groups.entry(group_key.join("\u{1f}")).or_default();
            group.window.push_back(at);
            if let Some(window) = rule.window {
                let oldest = at - chrono_duration(window);
                while group.window.front().is_some_and(|t| *t <= oldest) {
                    group.window.pop_front();
                }
            } else {
                // No window: each match stands alone (the threshold is 1).
                while group.window.len() > 1 {
                    group.window.pop_front();
                }
            }
            group.last_match = Some(at);
            let count = group.window.len() as u32;
            if count < rule.threshold {
                continue;
            }
            let mut dedup = rule.name.clone();
            for field in &rule.dedup_key {
                dedup.push('|');
                dedup.push_str(&value_text(&fields, field));
            }
            let suppressed = state
                .last_alert
                .get(&dedup)
                .is_some_and(|last| !rule.suppress.is_zero() && at - *last < chrono_duration(rule.suppress));
            group.in_alarm = true;
            group.dedup.clone_from(&dedup);
            if suppressed {
                continue;
            }
            state.last_alert.insert(dedup.clone(), at);
            let groups: Vec<String> = rule.group_by.iter().zip(&group_key).map(|(f, v)| format!("{f}={v}")).collect();
            let reason = match rule.window {
                Some(window) if rule.threshold > 1 => format!(
                    "{count} matching events within {}s{} (threshold {})",
                    window.as_secs(),
                    if groups.is_empty() { String::new() } else { format!(" for {}", groups.join(", ")) },
                    rule.threshold
                ),
                _ if !rule.description.is_empty() => rule.description.clone(),
                _ => format!("event matched: {}", rule.condition_text),
            };
            alerts.push(Alert {
                rule: rule.name.clone(),
                severity: rule.severity,
                status: AlertStatus::Firing,
                dedup_key: dedup,
                count,
                at,
                reason,
                event: Some(event.clone()),
            });
        }
        alerts
    }

    /// Resolves groups that have been quiet for their rule's resolve_after.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<Alert> {
        let mut alerts = Vec::new();
        for (rule, state) in self.rules.iter().zip(self.state.iter_mut()) {
            let quiet = chrono_duration(rule.resolve_after);
            for group in state.groups.values_mut() {
                let Some(last) = group.last_match else { continue };
                if group.in_alarm && now - last >= quiet {
                    group.in_alarm = false;
                    group.window.clear();
                    alerts.push(Alert {
                        rule: rule.name.clone(),
                        severity: rule.severity,
                        status: AlertStatus::Resolved,
                        dedup_key: group.dedup.clone(),
                        count: 0,
                        at: now,
                        reason: format!("no matching event for {}s", rule.resolve_after.as_secs()),
                        event: None,
                    });
                }
            }
            // Forget groups with nothing left to count.
            let keep = |g: &GroupState| g.in_alarm || !g.window.is_empty();
            state.groups.retain(|_, g| keep(g));
        }
        alerts
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use pgtrail_event::EventClass;

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn failed_login(user: &str, secs: i64) -> ActivityEvent {
        let mut e = ActivityEvent::new(EventClass::Connect, "CONNECT", at(secs));
        e.db_user_name = Some(user.into());
        e.sql_state = Some("28P01".into());
        e
    }

    fn engine(text: &str) -> Engine {
        Engine::new(RuleSet::parse(text, "t.toml").unwrap())
    }

    const BURST: &str = r#"
[[rule]]
name = "failed logins"
condition = 'class == "CONNECT" && sqlState == "28P01"'
severity = "high"
group_by = ["dbUserName"]
window_secs = 60
threshold = 3
suppress_secs = 300
resolve_after_secs = 120
"#;

    #[test]
    fn a_burst_per_user_fires_once_then_resolves() {
        let mut e = engine(BURST);
        assert_eq!(e.alarms(), vec![("failed logins", Alarm::InsufficientData)]);
        let mut fired = Vec::new();
        // Two for bob, spread out: never three within a minute.
        fired.extend(e.process(&failed_login("bob", 0)));
        fired.extend(e.process(&failed_login("bob", 70)));
        assert!(fired.is_empty());
        assert_eq!(e.alarms(), vec![("failed logins", Alarm::Ok)]);
        // Three for alice within a minute: one alert, then suppressed repeats.
        for s in [100, 110, 120, 125, 130] {
            fired.extend(e.process(&failed_login("alice", s)));
        }
        assert_eq!(fired.len(), 1, "{fired:?}");
        assert_eq!(fired[0].dedup_key, "failed logins|alice");
        assert_eq!(fired[0].count, 3);
        assert!(fired[0].reason.contains("3 matching events within 60s for dbUserName=alice"), "{}", fired[0].reason);
        assert_eq!(e.alarms(), vec![("failed logins", Alarm::Alarm)]);
        // Quiet for two minutes: resolved, with the same dedup key.
        let resolved = e.tick(at(130 + 120));
        assert_eq!(resolved.len(), 1);
        assert_eq!(
            (resolved[0].status, resolved[0].dedup_key.as_str()),
            (AlertStatus::Resolved, "failed logins|alice")
        );
        assert_eq!(e.alarms(), vec![("failed logins", Alarm::Ok)]);
    }

    #[test]
    fn noise_is_skipped_unless_asked_for_and_errors_do_not_match() {
        let mut e = engine(
            "[[rule]]\nname = \"reads\"\ncondition = 'class == \"READ\"'\n\
             [[rule]]\nname = \"all reads\"\ncondition = 'class == \"READ\"'\ninclude_noise = true\n\
             [[rule]]\nname = \"bulk\"\ncondition = 'rowCount > 100'\n",
        );
        let mut noise = ActivityEvent::new(EventClass::Read, "SELECT", at(0));
        noise.noise = true;
        let fired: Vec<String> = e.process(&noise).into_iter().map(|a| a.rule).collect();
        assert_eq!(fired, vec!["all reads"]);
        // A real read without a row count: "bulk" cannot compare null, which is no match.
        let read = ActivityEvent::new(EventClass::Read, "SELECT", at(1));
        let fired: Vec<String> = e.process(&read).into_iter().map(|a| a.rule).collect();
        assert_eq!(fired, vec!["reads", "all reads"]);
        assert_eq!(e.evaluation_errors, 1);
    }
}
